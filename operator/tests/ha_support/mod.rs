//! Test support for the HA end-to-end tests: a local cluster run by the real
//! `tandem local up` on real PostgreSQL, the dump it prints when a test
//! fails, and (from the testkit) the acknowledged-writes writer.
#![allow(dead_code)]

pub mod cluster;
pub mod dump;
pub mod faults;
pub mod ops;
pub use tandem_testkit::writer;
