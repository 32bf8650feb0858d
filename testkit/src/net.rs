//! Free loopback ports for servers a test starts (agents, postgres, an
//! operator's metrics port). Binds sockets to probe.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// First port handed out; below the kernel's ephemeral range (32768 up), so
/// an outgoing connection never takes a port a test has handed out but not
/// yet bound.
const FIRST: u16 = 20000;
/// Ports handed out stay below this one (they wrap around to `FIRST`).
const LAST: u16 = 32700;

/// A port on 127.0.0.1 that is free now (probed by binding). Each test
/// process starts at its own offset and counts up, so parallel test binaries
/// and the tests of one binary rarely probe the same port.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let offset = std::process::id() % 1000 * 12;
    loop {
        let n = NEXT.fetch_add(1, Ordering::SeqCst).wrapping_add(offset);
        let p = FIRST + (n % u32::from(LAST - FIRST)) as u16;
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_handed_out_differ_and_stay_below_the_ephemeral_range() {
        // Whether a port is still free when the caller binds it is a race
        // with every other process on the machine: not asserted here.
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        assert!(ports.iter().all(|p| (FIRST..LAST).contains(p)), "{ports:?}");
    }
}
