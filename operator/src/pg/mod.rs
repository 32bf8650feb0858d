//! PostgreSQL operations: queries, the pg_ctl / initdb / pg_rewind /
//! pg_basebackup runner, configuration and signal files. Does I/O.
