//! The literal template being planned on this thread ([`TEMPLATE`]): which constants are
//! template constants, and whether the plan depends on a constant's value (not reusable).

use std::collections::HashMap;

/// While a literal template is planned: parser location -> (constant #, negated), and
/// whether a key constant was found that is not one of them.
type TemplateState = Option<(HashMap<i32, (usize, bool)>, bool)>;

thread_local! {
    /// The template being planned on this thread (see [`crate::routing::literals`]).
    pub(super) static TEMPLATE: std::cell::RefCell<TemplateState> = const { std::cell::RefCell::new(None) };
}

/// Marks the template being planned as not reusable (a constant's value shapes the plan).
pub(super) fn template_veto() {
    TEMPLATE.with(|t| {
        if let Some((_, unmapped)) = t.borrow_mut().as_mut() {
            *unmapped = true;
        }
    });
}

/// The template constant at parser location `loc`, if a template is being planned; notes
/// a key constant that is not a template constant.
pub(super) fn template_literal(loc: i32) -> Option<(usize, bool)> {
    TEMPLATE.with(|t| {
        let mut t = t.borrow_mut();
        let (locs, unmapped) = t.as_mut()?;
        let hit = locs.get(&loc).copied();
        if hit.is_none() {
            *unmapped = true;
        }
        hit
    })
}
