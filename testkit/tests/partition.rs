//! The partition helper against the real packet filter (root and iptables
//! needed): a listener on one 127.x address, connections from others, cut
//! and restored. Addresses are in 127.99.0.0/16, away from the 127.77.0.0/16
//! blocks of local clusters that other tests run at the same time.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::Command;
use std::time::Duration;

use tandem_testkit::{connect_from, Partition, PartitionError};
use tokio::net::TcpListener;

/// How long a connection attempt may take before it counts as cut.
const TRY_FOR: Duration = Duration::from_millis(700);

/// Three addresses of a block of this test process's own, so parallel runs do not meet.
fn addrs(test: u8) -> [Ipv4Addr; 3] {
    let block = (std::process::id() % 250) as u8;
    [1, 2, 3].map(|h| Ipv4Addr::new(127, 99, block, test * 10 + h))
}

/// A listener on `addr` accepting (and dropping) connections forever.
async fn listen(addr: Ipv4Addr) -> SocketAddr {
    let l = TcpListener::bind((addr, 0)).await.expect("bind");
    let at = l.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            drop(s);
        }
    });
    at
}

async fn reaches(from: Ipv4Addr, to: SocketAddr) -> bool {
    connect_from(from, to, TRY_FOR).await.is_ok()
}

fn iptables_listing() -> String {
    let out = Command::new("iptables")
        .args(["-w", "10", "-S"])
        .output()
        .expect("iptables -S");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn a_cut_between_two_addresses_drops_their_connections_until_restored() {
    let [a, b, c] = addrs(1);
    let at = listen(a).await;
    assert!(reaches(b, at).await, "no connection before the cut");
    let mut p = Partition::new().expect("partition");
    let cut = p.cut(b, a).expect("cut");
    assert!(!reaches(b, at).await, "{b} reached {at} through the cut");
    assert!(reaches(c, at).await, "the cut of {b} also cut {c}");
    p.restore(cut).expect("restore");
    assert!(reaches(b, at).await, "{b} cannot reach {at} after restore");
}

#[tokio::test]
async fn a_port_cut_leaves_the_other_ports_of_the_address() {
    let [a, b, _] = addrs(2);
    let (one, two) = (listen(a).await, listen(a).await);
    let mut p = Partition::new().expect("partition");
    let SocketAddr::V4(one_v4) = one else {
        panic!("not IPv4")
    };
    p.cut(b, SocketAddrV4::new(*one_v4.ip(), one_v4.port()))
        .expect("cut");
    assert!(!reaches(b, one).await, "port {one} was not cut");
    assert!(reaches(b, two).await, "port {two} was cut too");
}

#[tokio::test]
async fn an_isolated_address_reaches_only_its_exceptions_until_the_guard_drops() {
    let [a, b, c] = addrs(3);
    let at = listen(a).await;
    let from_a = listen(b).await;
    let mut p = Partition::new().expect("partition");
    p.isolate(a, &[c]).expect("isolate");
    assert!(!reaches(b, at).await, "{b} reached isolated {a}");
    assert!(!reaches(a, from_a).await, "isolated {a} reached {b}");
    assert!(
        !reaches(Ipv4Addr::LOCALHOST, at).await,
        "127.0.0.1 reached isolated {a}"
    );
    assert!(reaches(c, at).await, "the exception {c} cannot reach {a}");
    drop(p);
    assert!(
        reaches(b, at).await,
        "{b} cannot reach {a} after the guard dropped"
    );
}

#[tokio::test]
async fn rules_are_removed_when_a_test_panics() {
    let [a, b, _] = addrs(4);
    let at = listen(a).await;
    let chain = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let seen = chain.clone();
    let panicked = std::thread::spawn(move || {
        let mut p = Partition::new().expect("partition");
        *seen.lock().expect("lock") = p.chain().to_string();
        p.cut(b, a).expect("cut");
        panic!("the test fails while the link is cut");
    })
    .join();
    assert!(panicked.is_err());
    let chain = chain.lock().expect("lock").clone();
    assert!(!chain.is_empty());
    assert!(
        !iptables_listing().contains(&chain),
        "{chain} is still there"
    );
    assert!(reaches(b, at).await, "the link stayed cut after the panic");
}

#[tokio::test]
async fn chains_of_dead_test_processes_are_removed_by_the_next_guard() {
    let mut child = Command::new("true").spawn().expect("spawn true");
    let dead = child.id();
    child.wait().expect("reap");
    let stale = format!("TANDEM-TEST-{dead}-0");
    for args in [
        vec!["-N", &stale],
        vec![
            "-A",
            &stale,
            "-p",
            "tcp",
            "-s",
            "127.99.255.1",
            "-j",
            "DROP",
        ],
        vec!["-I", "INPUT", "1", "-i", "lo", "-j", &stale],
    ] {
        let ok = Command::new("iptables")
            .args(["-w", "10"])
            .args(&args)
            .status()
            .expect("iptables");
        assert!(ok.success(), "iptables {args:?}");
    }
    let _p = Partition::new().expect("partition");
    let listing = iptables_listing();
    assert!(!listing.contains(&stale), "stale {stale} left:\n{listing}");
}

#[test]
fn only_loopback_addresses_are_cut() {
    let mut p = Partition::new().expect("partition");
    let err = p
        .cut(Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(127, 99, 0, 1))
        .expect_err("a non-loopback cut");
    assert!(matches!(err, PartitionError::NotLoopback(_)), "{err}");
    let err = p
        .isolate(Ipv4Addr::new(127, 99, 0, 1), &[Ipv4Addr::new(10, 0, 0, 1)])
        .expect_err("a non-loopback exception");
    assert!(matches!(err, PartitionError::NotLoopback(_)), "{err}");
    assert!(
        !iptables_listing().contains("192.0.2.1"),
        "a rule names a non-loopback address"
    );
}
