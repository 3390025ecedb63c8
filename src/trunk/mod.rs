//! Trunks at run time: inbound matching (pure, `matching`), one request to a trunk with
//! its digest answer (`client`), and the OPTIONS health pings and REGISTER client with
//! their supervisor (`monitor`). Failover itself is the outbound call's (`call::outbound`).
pub mod client;
pub mod matching;
pub mod monitor;
