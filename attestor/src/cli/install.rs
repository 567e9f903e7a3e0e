//! `attestor install DEST`: the init container's copy of the plugin binary out of its
//! `FROM scratch` image (`crate::install`). Prints what `plugin_checksum` must be.

use std::path::Path;

use super::Failure;
use crate::install::{self, InstallError};
use crate::status::{Code, Status};

pub(super) fn run(dest: &Path) -> Result<(), Failure> {
    match install::install(Path::new(install::SELF_EXE), dest) {
        Ok(done) => {
            println!(
                "installed {} ({} bytes, sha256 {}): plugin_checksum must be this sha256",
                done.path.display(),
                done.bytes,
                done.sha256
            );
            Ok(())
        }
        Err(e) => {
            let code = match e {
                InstallError::Mismatch { .. } => Code::DataLoss,
                InstallError::Write { .. } => Code::Internal,
                InstallError::ReadSource { .. }
                | InstallError::SourceTooLarge { .. }
                | InstallError::Directory { .. }
                | InstallError::IsDirectory { .. } => Code::FailedPrecondition,
            };
            Err(Failure::text(Status::new(code, e.to_string())))
        }
    }
}
