//! `veto nats ...`: the multi-region NATS topology (config generation) and stream
//! provisioning.

use super::Failure;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum NatsCommand {}

pub async fn run(cmd: NatsCommand) -> Result<(), Failure> {
    match cmd {}
}
