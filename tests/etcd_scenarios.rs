//! The failover controllers' scenario suite (`src/failover/scenarios.rs`,
//! the embedded controller's in virtual time) on the etcd controller, in
//! real time against a real etcd (Debian's etcd-server) that each world
//! starts on loopback. Build with `--features etcd`.

use std::time::Duration;

use mcrelay::failover::sim::World;
use mcrelay::failover::{ControllerKind, DEAF, Member, Report, ReportedRole, Settings};

const KIND: ControllerKind = ControllerKind::Etcd;
/// Real time: one round of 40 faults (the embedded suite runs 20 of 200).
const SOAK: (usize, usize) = (1, 40);

include!("../src/failover/scenarios.rs");
