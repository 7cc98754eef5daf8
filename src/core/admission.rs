//! Connections per client address (`--max-conns-per-ip N`, CONTRACT section 9), sans-IO: the
//! decision whether a newcomer from an IP address may be served, and the count behind it.
//!
//! Both engines ask [`PerIp::try_admit`] in their `admit` (after `--max-conns`) and call
//! [`PerIp::release`] when the connection's resources are freed, so one address cannot take
//! every slot of `--max-conns` and lock everyone else out. An address's entry goes away when
//! its count is back to zero, so the map holds only addresses with a connection open now:
//! its size is bounded by the connections served, however many addresses came and went.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

/// Why a newcomer is refused (it gets `END server-full`, as at `--max-conns`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The newcomer's address.
    pub ip: IpAddr,
    /// The limit it is at.
    pub max: usize,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "max-conns-per-ip {} reached for {}", self.max, self.ip)
    }
}

/// Open connections per client address, and the limit.
#[derive(Debug, Clone, Default)]
pub struct PerIp {
    /// `None`: no limit (connections are still counted, so a limit set later by a reload
    /// applies to the connections already open).
    max: Option<usize>,
    open: HashMap<IpAddr, usize>,
}

impl PerIp {
    /// At most `max` connections at once from one address (`None`: no limit).
    pub fn new(max: Option<usize>) -> Self {
        Self {
            max,
            open: HashMap::new(),
        }
    }

    /// A newcomer from `ip`: counted and admitted, or refused (and not counted) when `ip`
    /// already has `max` connections open. An IPv4 address seen as IPv6 (`::ffff:a.b.c.d`,
    /// from a dual-stack listener) counts as the IPv4 address it is.
    pub fn try_admit(&mut self, ip: IpAddr) -> Result<(), Refusal> {
        let ip = ip.to_canonical();
        let n = self.open.entry(ip).or_insert(0);
        // (Never refused at zero: a limit is at least 1, so a refused address has an entry.)
        if let Some(max) = self.max.filter(|&max| *n >= max) {
            return Err(Refusal { ip, max });
        }
        *n += 1;
        Ok(())
    }

    /// A new limit (a reload): newcomers are judged by it; connections already open stay.
    pub fn set_max(&mut self, max: Option<usize>) {
        self.max = max;
    }

    /// A connection from `ip` that [`PerIp::try_admit`] admitted is gone.
    pub fn release(&mut self, ip: IpAddr) {
        let ip = ip.to_canonical();
        if let Some(n) = self.open.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.open.remove(&ip);
            }
        }
    }

    /// Connections open from `ip`, as counted.
    pub fn open(&self, ip: IpAddr) -> usize {
        self.open.get(&ip.to_canonical()).copied().unwrap_or(0)
    }

    /// Addresses with a connection open (the map's size).
    pub fn addresses(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, d))
    }

    #[test]
    fn the_limit_holds_per_address_and_a_release_frees_a_slot() {
        let mut p = PerIp::new(Some(2));
        assert_eq!(p.try_admit(v4(1)), Ok(()));
        assert_eq!(p.try_admit(v4(1)), Ok(()));
        let refused = p.try_admit(v4(1)).unwrap_err();
        assert_eq!(refused, Refusal { ip: v4(1), max: 2 });
        assert_eq!(
            refused.to_string(),
            "max-conns-per-ip 2 reached for 10.0.0.1"
        );
        // A refusal is not counted; another address is not affected.
        assert_eq!(p.open(v4(1)), 2);
        assert_eq!(p.try_admit(v4(2)), Ok(()));
        p.release(v4(1));
        assert_eq!(p.try_admit(v4(1)), Ok(()));
        assert!(p.try_admit(v4(1)).is_err());
    }

    #[test]
    fn entries_go_at_zero_so_memory_follows_open_connections() {
        let mut p = PerIp::new(Some(1));
        for d in 0..=255 {
            assert_eq!(p.try_admit(v4(d)), Ok(()));
            p.release(v4(d));
        }
        assert_eq!(p.addresses(), 0);
        // A release without an admission (or a second one) does nothing.
        p.release(v4(9));
        assert_eq!(p.try_admit(v4(9)), Ok(()));
        p.release(v4(9));
        p.release(v4(9));
        assert_eq!((p.addresses(), p.open(v4(9))), (0, 0));
    }

    #[test]
    fn an_ipv4_mapped_address_is_its_ipv4_address() {
        let mut p = PerIp::new(Some(1));
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        assert_eq!(p.try_admit(v4(1)), Ok(()));
        assert_eq!(p.try_admit(mapped), Err(Refusal { ip: v4(1), max: 1 }));
        p.release(mapped);
        assert_eq!(p.addresses(), 0);
        assert_eq!(p.try_admit(IpAddr::V6(Ipv6Addr::LOCALHOST)), Ok(()));
    }

    #[test]
    fn without_a_limit_all_are_admitted_and_a_limit_set_later_counts_them() {
        let mut p = PerIp::new(None);
        for _ in 0..3 {
            assert_eq!(p.try_admit(v4(1)), Ok(()));
        }
        // A reload sets a limit of 2: the three already open stay, a fourth is refused
        // until two of them have gone.
        p.set_max(Some(2));
        assert_eq!(p.try_admit(v4(1)), Err(Refusal { ip: v4(1), max: 2 }));
        p.release(v4(1));
        assert_eq!(p.try_admit(v4(1)), Err(Refusal { ip: v4(1), max: 2 }));
        p.release(v4(1));
        assert_eq!(p.try_admit(v4(1)), Ok(()));
        for _ in 0..3 {
            p.release(v4(1));
        }
        assert_eq!(p.addresses(), 0);
    }
}
