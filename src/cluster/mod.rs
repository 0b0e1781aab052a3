//! Cluster: placement (which shard holds a key), the meta group's settings, routing to
//! group leaders. Membership, join and the replica controller arrive with clustering.
pub mod batcher;
pub mod meta;
pub mod outbox;
pub mod placement;
pub mod router;

pub use batcher::ProposalBatcher;
pub use outbox::OutboxRelay;
pub use placement::ShardMap;
pub use router::{RouteError, Router};
