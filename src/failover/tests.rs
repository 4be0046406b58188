//! The embedded controller in virtual time: the scenario suite
//! (`scenarios.rs`, which the etcd controller passes too, against a real
//! etcd: `tests/etcd_scenarios.rs`).

use std::time::Duration;

use super::sim::World;
use super::{ControllerKind, DEAF, Member, Report, ReportedRole, Settings};

const KIND: ControllerKind = ControllerKind::Embedded;
/// Rounds of the random soak, and faults per round.
const SOAK: (usize, usize) = (20, 200);

include!("scenarios.rs");
