//! The Kubernetes providers against a real kube-apiserver (with etcd and the
//! controller manager) on 127.0.0.1, built and started by `scripts/test.sh`,
//! which exports its kubeconfig as `RELAY_TEST_KUBECONFIG`. Each test works
//! in a namespace of its own.

#![allow(clippy::unwrap_used)]

mod deployments;
mod faults;
mod stores;
mod support;

#[path = "../shared/fault_proxy.rs"]
mod fault_proxy;
#[path = "../shared/golden.rs"]
mod golden;
#[path = "../shared/planted.rs"]
mod planted;
#[path = "../shared/rollouts.rs"]
mod rollouts;
