//! AFL target `frames` (issue 17): see tests/fuzz_targets/mod.rs for what it covers and the
//! input format, scripts/fuzz.sh to run it.

#[path = "../../../tests/fuzz_targets/mod.rs"]
mod targets;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        targets::frames(data);
    });
}
