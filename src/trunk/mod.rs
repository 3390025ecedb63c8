//! Trunks at run time. So far: inbound matching (pure). Health (OPTIONS), REGISTER and
//! failover come next.
pub mod matching;
