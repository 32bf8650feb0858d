//! Loopback addresses of a local cluster's instances: each cluster gets a
//! block `127.77.X.0/24` that no socket on the machine uses yet, and
//! instance N listens on `127.77.X.(N+1)`, so that a test can cut the links
//! of one instance with packet-filter rules on its address. Reads
//! /proc/net/tcp to see which blocks are taken.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

/// First two octets of every block.
const PREFIX: [u8; 2] = [127, 77];
/// Files listing the machine's TCP sockets with their local addresses.
const SOCKET_TABLES: [&str; 2] = ["/proc/net/tcp", "/proc/net/tcp6"];

/// The address of instances of a cluster whose state predates per-instance
/// addresses: they keep sharing 127.0.0.1.
pub const SHARED: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The address of instance `ordinal` in `block` (127.0.0.1 without a block).
pub fn instance_address(block: Option<Ipv4Addr>, ordinal: u32) -> IpAddr {
    let Some(block) = block else {
        return SHARED;
    };
    let [a, b, c, _] = block.octets();
    // MAX_INSTANCES (16) keeps ordinal + 1 far below 255.
    let host = u8::try_from(ordinal + 1).unwrap_or(u8::MAX);
    IpAddr::V4(Ipv4Addr::new(a, b, c, host))
}

/// A block no socket uses, searched from a spot derived from `seed` (the
/// process id), so clusters started side by side try different blocks first.
pub fn pick_block(seed: u32) -> Option<Ipv4Addr> {
    let taken = taken_blocks(&socket_tables());
    free_block(seed, &taken)
}

/// The first block at or after `seed`'s spot (wrapping) whose third octet is not taken.
fn free_block(seed: u32, taken: &BTreeSet<u8>) -> Option<Ipv4Addr> {
    // Third octets 1..=254: never the .0 or .255 of the /16.
    let start = seed.wrapping_mul(2654435761) % 254;
    (0..254u32)
        .map(|i| u8::try_from((start + i) % 254 + 1).unwrap_or(1))
        .find(|c| !taken.contains(c))
        .map(|c| Ipv4Addr::new(PREFIX[0], PREFIX[1], c, 0))
}

/// Contents of the kernel's TCP socket tables (missing ones are empty).
fn socket_tables() -> String {
    SOCKET_TABLES
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Third octets of the 127.77.X.0/24 blocks some socket is bound in, from
/// /proc/net/tcp{,6} text.
fn taken_blocks(tables: &str) -> BTreeSet<u8> {
    tables
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .filter_map(local_ipv4)
        .filter(|ip| ip.octets()[..2] == PREFIX)
        .map(|ip| ip.octets()[2])
        .collect()
}

/// The IPv4 address of a `local_address` field (`0100007F:1F90`, or the
/// IPv4-mapped `0000000000000000FFFF00000100007F:1F90` of tcp6): the kernel
/// prints each 32-bit word of the address, in network order, as a native integer.
fn local_ipv4(field: &str) -> Option<Ipv4Addr> {
    let (hex, _port) = field.split_once(':')?;
    let word = match hex.len() {
        8 => hex,
        32 if hex[..24].eq_ignore_ascii_case("0000000000000000FFFF0000") => &hex[24..],
        _ => return None,
    };
    let n = u32::from_str_radix(word, 16).ok()?;
    Some(Ipv4Addr::from(n.to_ne_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How the kernel prints an IPv4 address in /proc/net/tcp.
    fn printed(ip: Ipv4Addr) -> String {
        format!("{:08X}", u32::from_ne_bytes(ip.octets()))
    }

    #[test]
    fn instance_addresses_follow_their_ordinal_in_the_block() {
        let block = Some(Ipv4Addr::new(127, 77, 9, 0));
        assert_eq!(instance_address(block, 0).to_string(), "127.77.9.1");
        assert_eq!(instance_address(block, 15).to_string(), "127.77.9.16");
        assert_eq!(instance_address(None, 3), SHARED);
    }

    #[test]
    fn blocks_in_use_are_read_from_the_socket_tables() {
        let tables = format!(
            "  sl  local_address rem_address   st\n   0: {}:4E21 00000000:0000 0A\n   1: {}:1F90 00000000:0000 0A\n   2: 0000000000000000FFFF0000{}:0050 00000000000000000000000000000000:0000 0A\n",
            printed(Ipv4Addr::new(127, 77, 5, 1)),
            printed(Ipv4Addr::LOCALHOST),
            printed(Ipv4Addr::new(127, 77, 200, 3)),
        );
        assert_eq!(taken_blocks(&tables), BTreeSet::from([5, 200]));
    }

    #[test]
    fn a_free_block_skips_taken_ones_and_none_is_left_when_all_are() {
        let first = free_block(7, &BTreeSet::new()).unwrap();
        let taken = BTreeSet::from([first.octets()[2]]);
        let second = free_block(7, &taken).unwrap();
        assert_ne!(first, second);
        assert_eq!(second.octets()[..2], PREFIX);
        assert!((1..=254).contains(&second.octets()[2]));
        let all: BTreeSet<u8> = (1..=254).collect();
        assert_eq!(free_block(7, &all), None);
    }

    #[test]
    fn a_socket_bound_in_a_block_takes_it() {
        let l = std::net::TcpListener::bind("127.77.251.1:0").unwrap();
        assert!(taken_blocks(&socket_tables()).contains(&251));
        drop(l);
    }
}
