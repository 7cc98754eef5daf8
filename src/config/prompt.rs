//! Questions on stdin for the settings neither a flag nor the file gave.

use std::io::{BufRead, Write};
use std::time::Duration;

use super::{fmt_duration, ConfigError};

/// Asks for settings on a line-oriented input, as the manual's programs do.
///
/// Enter or end of input keeps the default. An invalid answer is explained and asked again
/// when the input is a terminal; otherwise it is an error, so a script never loops forever.
pub struct Prompter<R, W> {
    input: R,
    // Visible to the settings modules so their tests can read the questions asked.
    pub(super) out: W,
    interactive: bool,
    eof: bool,
}

impl<R: BufRead, W: Write> Prompter<R, W> {
    /// A prompter reading answers from `input` and writing questions to `out`.
    pub fn new(input: R, out: W, interactive: bool) -> Self {
        Self {
            input,
            out,
            interactive,
            eof: false,
        }
    }

    /// Asks `question`, showing `default` (already formatted), and parses the answer.
    pub fn ask<T>(
        &mut self,
        setting: &'static str,
        question: &str,
        default: T,
        shown_default: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        loop {
            if self.eof {
                return Ok(default);
            }
            write!(self.out, "{question} [default {shown_default}]: ")
                .map_err(ConfigError::Prompt)?;
            self.out.flush().map_err(ConfigError::Prompt)?;
            let mut line = String::new();
            if self
                .input
                .read_line(&mut line)
                .map_err(ConfigError::Prompt)?
                == 0
            {
                self.eof = true;
                writeln!(self.out).map_err(ConfigError::Prompt)?;
                return Ok(default);
            }
            let answer = line.trim();
            if answer.is_empty() {
                return Ok(default);
            }
            match parse(answer) {
                Ok(v) => return Ok(v),
                Err(reason) if self.interactive => {
                    writeln!(
                        self.out,
                        "  {reason}; try again, or press Enter for the default"
                    )
                    .map_err(ConfigError::Prompt)?;
                }
                Err(reason) => {
                    return Err(ConfigError::BadAnswer {
                        setting,
                        answer: answer.to_owned(),
                        reason,
                    })
                }
            }
        }
    }

    /// Writes an informational line (a confirmation, a warning) next to the prompts.
    pub fn say(&mut self, line: &str) -> Result<(), ConfigError> {
        writeln!(self.out, "{line}").map_err(ConfigError::Prompt)
    }
}

/// A setting's value: given, else asked for (when a prompter is at hand), else the default.
pub(super) fn setting<T: ShowDefault, R: BufRead, W: Write>(
    given: Option<T>,
    prompter: &mut Option<&mut Prompter<R, W>>,
    name: &'static str,
    question: &str,
    default: T,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<T, ConfigError> {
    match (given, prompter) {
        (Some(v), _) => Ok(v),
        (None, Some(p)) => {
            let shown = default.show();
            p.ask(name, question, default, &shown, parse)
        }
        (None, None) => Ok(default),
    }
}

/// How a default is shown in a prompt: the way a user would type it.
pub(super) trait ShowDefault {
    fn show(&self) -> String;
}

impl ShowDefault for Duration {
    fn show(&self) -> String {
        fmt_duration(*self)
    }
}

impl ShowDefault for u32 {
    fn show(&self) -> String {
        self.to_string()
    }
}
