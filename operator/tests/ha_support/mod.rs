//! Test support for the HA end-to-end tests: a local cluster run by the real
//! `tandem local up` on real PostgreSQL, and (from the testkit) the
//! acknowledged-writes writer.
#![allow(dead_code)]

pub mod cluster;
pub mod faults;
pub mod ops;
pub use tandem_testkit::writer;
