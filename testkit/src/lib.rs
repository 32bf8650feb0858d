//! Test support shared by tandem's test suites (a dev-dependency only):
//! processes (`pid_alive`), bounded waits, temporary directories, a mocked
//! Kubernetes API server, network partitions between loopback addresses
//! (iptables), and the writer that checks acknowledged writes survive. Does
//! I/O (processes, files, sockets, SQL, packet-filter rules).

pub mod dir;
pub mod mock_api;
pub mod partition;
pub mod process;
pub mod wait;
pub mod writer;

pub use dir::TestDir;
pub use mock_api::{MockApiServer, Received};
pub use partition::{connect_from, Partition, PartitionError, Side};
pub use process::{is_postgres, pid_alive, signal};
pub use wait::{poll_until, poll_until_async, wait_for, wait_until, POLL};
