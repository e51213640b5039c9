//! Seed inputs of the cargo-fuzz targets in `fuzz/`, shared by the unit tests that
//! define them.

use std::path::Path;

/// Writes the seed inputs of fuzz target `target` into `fuzz/corpus/<target>/` and
/// the committed `fuzz/seeds/<target>/` when `IOMMUFD_WRITE_FUZZ_SEEDS` is set;
/// otherwise checks that the committed seeds are still these. Outside the repository
/// (a packaged crate has no `fuzz/`), there is nothing to check.
pub(crate) fn write_fuzz_seeds(target: &str, seeds: &[(&str, Vec<u8>)]) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let write = std::env::var_os("IOMMUFD_WRITE_FUZZ_SEEDS").is_some();
    if !write && !fuzz.join("seeds").is_dir() {
        return;
    }
    for (name, bytes) in seeds {
        if write {
            for dir in ["corpus", "seeds"].map(|d| fuzz.join(d).join(target)) {
                std::fs::create_dir_all(&dir).expect("fuzz seed directory");
                std::fs::write(dir.join(name), bytes).expect("fuzz seed");
            }
        } else {
            let path = fuzz.join("seeds").join(target).join(name);
            let old = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(
                &old, bytes,
                "fuzz/seeds/{target}/{name} is stale: run \
                 IOMMUFD_WRITE_FUZZ_SEEDS=1 cargo test -p iommufd fuzz_seeds"
            );
        }
    }
}
