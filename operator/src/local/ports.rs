//! Picking free TCP ports on 127.0.0.1 below 32768, so they never collide
//! with the kernel's ephemeral client ports. Binds sockets to test them.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};

/// Lowest port picked.
const LOW: u16 = 20000;
/// Highest port picked (exclusive): the ephemeral range starts at 32768.
const HIGH: u16 = 32768;

/// Picks distinct free ports, never the same twice.
pub struct PortPicker {
    taken: HashSet<u16>,
    next: u16,
}

impl PortPicker {
    /// A picker starting at a spot derived from `seed` (e.g. the process id), so
    /// that clusters started side by side start their search in different places.
    pub fn new(seed: u32) -> Self {
        let span = u32::from(HIGH - LOW);
        let next = LOW + u16::try_from((seed.wrapping_mul(2654435761)) % span).unwrap_or(0);
        Self {
            taken: HashSet::new(),
            next,
        }
    }

    /// Mark a port as already used (a fixed `--rw-port`, say).
    pub fn reserve(&mut self, port: u16) {
        self.taken.insert(port);
    }

    /// A free port on 127.0.0.1, or `None` after trying the whole range.
    pub fn pick(&mut self) -> Option<u16> {
        for _ in LOW..HIGH {
            let port = self.next;
            self.next = if self.next + 1 >= HIGH {
                LOW
            } else {
                self.next + 1
            };
            if self.taken.contains(&port) {
                continue;
            }
            if is_free(port) {
                self.taken.insert(port);
                return Some(port);
            }
        }
        None
    }
}

/// Whether nothing listens on 127.0.0.1:`port`.
pub fn is_free(port: u16) -> bool {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picked_ports_are_distinct_free_and_below_the_ephemeral_range() {
        let mut p = PortPicker::new(std::process::id());
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut seen = HashSet::new();
        for _ in 0..20 {
            let port = p.pick().unwrap();
            assert!((LOW..HIGH).contains(&port));
            assert!(seen.insert(port), "port {port} picked twice");
            assert_ne!(port, held.local_addr().unwrap().port());
        }
    }

    #[test]
    fn reserved_ports_are_skipped() {
        let mut p = PortPicker::new(0);
        p.reserve(LOW);
        assert_ne!(p.pick(), Some(LOW));
    }
}
