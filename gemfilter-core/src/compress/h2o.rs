//! H2O (Zhang et al., 2023): heavy hitters by accumulated attention, plus a recent window.

use super::{HeadSharing, KvCompressor, LayerState, rows_to_host};
use crate::error::{CoreError, Result};

/// H2O as GemFilter's reference runs it: during the prompt's forward, every key's softmax
/// attention is accumulated over all queries (causal); the `budget - recent` keys with the
/// largest totals before the recent window (the heavy hitters) are kept with the `recent` last
/// positions. Later tokens are appended without further eviction, as in that reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2o {
    /// Cache entries kept per layer and head (heavy hitters + recent).
    pub budget: usize,
    /// Recent positions always kept (32 in GemFilter's reference).
    pub recent: usize,
    /// Which heads share kept positions.
    pub heads: HeadSharing,
}

impl H2o {
    /// The reference settings (recent window 32, per query head) at `budget`.
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            recent: 32,
            heads: HeadSharing::PerQueryHead,
        }
    }
}

impl KvCompressor for H2o {
    fn name(&self) -> String {
        "h2o".into()
    }

    fn budget(&self) -> usize {
        self.budget
    }

    fn recent(&self) -> usize {
        self.recent
    }

    fn head_sharing(&self) -> HeadSharing {
        self.heads
    }

    fn needs_column_sums(&self) -> bool {
        true
    }

    fn scores(&self, state: &LayerState<'_>) -> Result<Vec<Vec<f32>>> {
        let sums = state.column_sums.ok_or_else(|| {
            CoreError::InvalidParameter("h2o needs the accumulated attention of the layer".into())
        })?;
        let n = sums.dims()[2];
        let kept_span = n.saturating_sub(self.recent);
        let rows = rows_to_host(sums.clone().narrow(2, 0, kept_span));
        let groups = state.queries.dims()[1] / state.keys.dims()[1];
        Ok(match self.heads {
            HeadSharing::PerQueryHead => rows,
            HeadSharing::PerKvHead => super::sum_groups(rows, groups),
        })
    }
}
