//! The node's typed errors and the Maelstrom error codes they map to.

use std::fmt;

/// Maelstrom's standard error codes used by this node.
pub mod code {
    /// The requested operation timed out.
    pub const TIMEOUT: u64 = 0;
    /// The addressed node does not exist.
    pub const NODE_NOT_FOUND: u64 = 1;
    /// The message type is not supported.
    pub const NOT_SUPPORTED: u64 = 10;
    /// The operation cannot be done right now (not initialized, port busy).
    pub const TEMPORARILY_UNAVAILABLE: u64 = 11;
    /// The request is missing a field or has one of the wrong type or range.
    pub const MALFORMED_REQUEST: u64 = 12;
    /// Indefinite failure: the operation may or may not have taken place.
    pub const CRASH: u64 = 13;
    /// Definite failure: the operation did not take place.
    pub const ABORT: u64 = 14;
    /// The key (here: a keep-alive client id) does not exist.
    pub const KEY_DOES_NOT_EXIST: u64 = 20;
    /// A precondition of the operation does not hold (echo server not started).
    pub const PRECONDITION_FAILED: u64 = 22;
}

/// Everything a request to the node can fail with; each variant has one Maelstrom code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeError {
    /// An RPC the node sent got no reply within the RPC timeout (code 0).
    Timeout {
        /// The msg_id of the unanswered request.
        msg_id: u64,
        /// The timeout that elapsed, in milliseconds.
        after_ms: u64,
    },
    /// The request's `type` is not one the node knows (code 10).
    NotSupported {
        /// The unknown type.
        msg_type: String,
    },
    /// A request other than `init` arrived before `init` (code 11).
    NotInitialized,
    /// The TCP echo server could not start, e.g. the port is in use (code 11).
    EchoStartFailed {
        /// The port asked for (0: any).
        port: u16,
        /// The operating system's error text.
        os_error: String,
    },
    /// `tcp_echo_start` for another port while the echo server already listens (code 22).
    EchoAlreadyRunning {
        /// The port the echo server listens on.
        running: u16,
        /// The other port asked for.
        asked: u16,
    },
    /// A field is missing, has the wrong type or is out of range (code 12).
    Malformed {
        /// What is wrong, naming the field.
        reason: String,
    },
    /// The keep-alive table has no such client (code 20).
    UnknownClient {
        /// The client id that was asked for.
        client_id: String,
    },
    /// `tcp_echo_send` before `tcp_echo_start` (code 22).
    EchoNotStarted,
    /// The echo round trip over TCP failed (code 14: nothing was echoed).
    EchoIo {
        /// The operating system's error text.
        os_error: String,
    },
    /// A node answered one of our RPCs with an error; it is passed on unchanged.
    Remote {
        /// The code from the error reply.
        code: u64,
        /// The text from the error reply.
        text: String,
    },
}

impl NodeError {
    /// A malformed-request error for `reason`.
    pub fn malformed(reason: impl Into<String>) -> NodeError {
        NodeError::Malformed {
            reason: reason.into(),
        }
    }

    /// The Maelstrom error code sent in the error reply.
    pub fn code(&self) -> u64 {
        match self {
            NodeError::Timeout { .. } => code::TIMEOUT,
            NodeError::NotSupported { .. } => code::NOT_SUPPORTED,
            NodeError::NotInitialized | NodeError::EchoStartFailed { .. } => {
                code::TEMPORARILY_UNAVAILABLE
            }
            NodeError::Malformed { .. } => code::MALFORMED_REQUEST,
            NodeError::UnknownClient { .. } => code::KEY_DOES_NOT_EXIST,
            NodeError::EchoNotStarted | NodeError::EchoAlreadyRunning { .. } => {
                code::PRECONDITION_FAILED
            }
            NodeError::EchoIo { .. } => code::ABORT,
            NodeError::Remote { code, .. } => *code,
        }
    }
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::Timeout { msg_id, after_ms } => {
                write!(f, "no reply to msg_id {msg_id} within {after_ms} ms")
            }
            NodeError::NotSupported { msg_type } => {
                write!(f, "unsupported message type: {msg_type}")
            }
            NodeError::NotInitialized => f.write_str("node not initialized: send init first"),
            NodeError::EchoStartFailed { port, os_error } => {
                write!(f, "cannot listen on port {port}: {os_error}")
            }
            NodeError::EchoAlreadyRunning { running, asked } => write!(
                f,
                "echo server already listening on port {running}; cannot also listen on {asked}"
            ),
            NodeError::Malformed { reason } => write!(f, "malformed request: {reason}"),
            NodeError::UnknownClient { client_id } => write!(f, "unknown client: {client_id}"),
            NodeError::EchoNotStarted => {
                f.write_str("echo server not started: send tcp_echo_start first")
            }
            NodeError::EchoIo { os_error } => write!(f, "echo round trip failed: {os_error}"),
            NodeError::Remote { text, .. } => f.write_str(text),
        }
    }
}

impl std::error::Error for NodeError {}
