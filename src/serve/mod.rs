//! Unicast fallback: an RTSP server for workstations (multicast or RTP
//! interleaved on TCP), authenticated with the server password. The
//! protocol logic here is sans-IO; `runtime::rtsp` drives it.

pub mod auth;
pub mod catch_up;
pub mod request;
pub mod session;
