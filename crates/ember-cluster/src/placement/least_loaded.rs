//! `least-loaded`: the node with the fewest requests in flight, then the least memory held
//! by instances, whatever it holds of the function: what Kubernetes' default scheduler does
//! (its least-allocated scoring), kept to compare snapshot-aware placement against.

use super::{Candidate, Placement, sort_rotating};

pub struct LeastLoaded;

impl Placement for LeastLoaded {
    fn name(&self) -> &'static str {
        "least-loaded"
    }

    fn rank(&self, _function: &str, nodes: &mut [Candidate<'_>], turn: usize) {
        sort_rotating(nodes, turn, |c| c.load());
    }
}
