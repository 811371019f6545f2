//! Helpers shared by the crate's unit tests.

/// A small deterministic PRNG (splitmix64): seeded, any seed is fine, no
/// dependency.
#[derive(Debug, Clone)]
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    /// `n` random bytes.
    pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Whether the oracle `program` runs (`program --version` exits 0). A test
/// that needs it fails when it is missing, so that a machine without it
/// cannot pass the suite by skipping; `OVAIO_SKIP_MISSING_TOOLS=1` turns
/// that into a skip (the test returns early after saying so).
pub(crate) fn require_tool(program: &str) -> bool {
    let ok = std::process::Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return true;
    }
    if std::env::var_os("OVAIO_SKIP_MISSING_TOOLS").is_some_and(|v| v == "1") {
        eprintln!("{program} not installed: skipping (OVAIO_SKIP_MISSING_TOOLS=1)");
        return false;
    }
    panic!(
        "{program} is needed by this test and is not installed (scripts/test.sh installs it; \
         OVAIO_SKIP_MISSING_TOOLS=1 skips such tests)"
    );
}
