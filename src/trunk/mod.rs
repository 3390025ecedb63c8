//! Trunks at run time: one request to a trunk with its digest answer (`client`), and the
//! OPTIONS health pings and REGISTER client with their supervisor (`monitor`). Which trunk
//! an inbound call came through is routing (`dialplan::trunk_match`); failover itself is
//! the outbound call's (`call::outbound`).
pub mod client;
pub mod monitor;
