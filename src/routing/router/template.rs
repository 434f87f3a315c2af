//! The literal template being planned ([`Template`]): which constants are template
//! constants, and whether the plan depends on a constant's value (not reusable). It is
//! passed down the planning calls that read key constants (`Option<&Template>`: `None`
//! when planning an exact text).

use std::cell::Cell;
use std::collections::HashMap;

/// A literal template being planned (see [`crate::routing::literals`]).
pub(super) struct Template {
    /// Parser location -> (constant #, negated).
    locs: HashMap<i32, (usize, bool)>,
    /// Whether a key constant was found that is not a template constant, or a constant's
    /// value shapes the plan: then the plan holds for this text only.
    vetoed: Cell<bool>,
}

impl Template {
    /// A template whose constants are at parser locations `locs` (-> constant #, negated).
    pub(super) fn new(locs: HashMap<i32, (usize, bool)>) -> Self {
        Template {
            locs,
            vetoed: Cell::new(false),
        }
    }

    /// Marks the template as not reusable (a constant's value shapes the plan).
    pub(super) fn veto(&self) {
        self.vetoed.set(true);
    }

    /// Whether the plan turned out to depend on a constant's value.
    pub(super) fn vetoed(&self) -> bool {
        self.vetoed.get()
    }

    /// The template constant at parser location `loc`; notes a key constant that is not a
    /// template constant (a veto).
    pub(super) fn literal(&self, loc: i32) -> Option<(usize, bool)> {
        let hit = self.locs.get(&loc).copied();
        if hit.is_none() {
            self.veto();
        }
        hit
    }
}

/// Vetoes the template being planned, if any.
pub(super) fn veto(tpl: Option<&Template>) {
    if let Some(t) = tpl {
        t.veto();
    }
}
