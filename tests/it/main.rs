//! Integration tests: the real server on port 0 against real receivers on port 0.

mod audit;
mod auth;
mod aws;
mod circuit;
mod cli;
mod cluster;
mod crash;
mod delivery;
mod event_types;
mod eventbridge;
mod fairness;
mod guard;
mod helpers;
mod limits;
mod logs;
mod metrics;
mod openapi;
mod operations;
mod otlp;
mod outage;
mod proxy;
mod publish;
mod retries;
mod store;
mod streams;
mod tracing;
