//! Test support shared by tandem's test suites (`operator/tests`, the
//! benches and `e2e`): processes (`pid_alive`, signals, bounded waits for a
//! child), free ports, bounded waits, temporary directories, log tails, a
//! mocked Kubernetes API server, network partitions between loopback
//! addresses (iptables), and the writer that checks acknowledged writes
//! survive. Does I/O (processes, files, sockets, SQL, packet-filter rules).

pub mod bench;
pub mod dir;
pub mod logs;
pub mod mock_api;
pub mod net;
pub mod partition;
pub mod process;
pub mod wait;
pub mod writer;

pub use dir::TestDir;
pub use logs::{file_tail, last_lines};
pub use mock_api::{MockApiServer, Received};
pub use net::free_port;
pub use partition::{connect_from, Partition, PartitionError, Side};
pub use process::{
    children_of, is_postgres, pid_alive, postmaster_pid, signal, signal_group, signal_server,
    terminate, wait_exit,
};
pub use wait::{poll_until, poll_until_async, wait_for, wait_until, POLL};
