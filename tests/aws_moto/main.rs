//! The AWS providers against a real local AWS emulator: moto in server mode,
//! started on 127.0.0.1 by `scripts/test.sh`, which exports its address as
//! `RELAY_TEST_MOTO_ENDPOINT`.

#![allow(clippy::unwrap_used)]

mod cloudwatch;
mod dynamodb;
mod ecs;
mod faults;
mod stores;
mod support;

#[path = "../common/mod.rs"]
mod common;
#[path = "../shared/fault_proxy.rs"]
mod fault_proxy;
#[path = "../shared/golden.rs"]
mod golden;
#[path = "../shared/planted.rs"]
mod planted;
#[path = "../shared/rollouts.rs"]
mod rollouts;
#[path = "../shared/serial_moto.rs"]
mod serial_moto;
#[path = "../shared/shared_stores.rs"]
mod shared_stores;
