//! `veto install-module`: copies the in-proxy Envoy module the image carries into a
//! directory Envoy reads (`ENVOY_DYNAMIC_MODULES_SEARCH_PATH`). The image has no shell and
//! no `cp`, so a Kubernetes init container runs this to hand `libvetoinproxy.so` to the Envoy
//! container through a shared volume (k8s/inproxy/).

use super::Failure;
use std::path::{Path, PathBuf};

/// Where the image keeps the module (deploy/container/rootfs.sh puts it there).
pub const IMAGE_MODULE: &str = "/usr/lib/veto/libvetoinproxy.so";

/// The file name Envoy looks for: `lib<dynamic_module_config.name>.so`.
const MODULE_FILE: &str = "libvetoinproxy.so";

/// Copies `from` to `<to>/libvetoinproxy.so` through a temporary name and a rename
/// (`write_atomically`), so Envoy never sees half a file; returns the path written.
pub fn install(from: &Path, to: &Path) -> Result<PathBuf, Failure> {
    let cant = |what: &str, p: &Path, e: std::io::Error| Failure {
        code: 73, // EX_CANTCREAT
        message: format!("{what} {}: {e}", p.display()),
    };
    if !from.is_file() {
        return Err(Failure {
            code: 66, // EX_NOINPUT
            message: format!(
                "no module at {} (an image built before the in-proxy mode?)",
                from.display()
            ),
        });
    }
    let dest = to.join(MODULE_FILE);
    veto::feed::snapshot::write_atomically(&dest, 0o755, |w| {
        std::io::copy(&mut std::fs::File::open(from)?, w).map(drop)
    })
    .map_err(|e| cant("cannot write", &dest, e))?;
    println!(
        "{}: installed ({} bytes)",
        dest.display(),
        std::fs::metadata(&dest).map_or(0, |m| m.len())
    );
    Ok(dest)
}
