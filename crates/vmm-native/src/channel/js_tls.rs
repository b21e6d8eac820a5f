//! `NativeTlsCreds`: x509 credentials in QEMU's layout, loaded once on a
//! worker thread (file reads stay off the JavaScript thread) and used for
//! any number of channels (`NativeChannel.startTls`).

use super::tls_creds::{load, Creds, Role};
use crate::error::{blocking, Blocking};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use std::path::PathBuf;
use vmm_sys::Error as NativeError;

/// Loaded credentials of one role.
#[napi]
pub struct NativeTlsCreds {
    pub(crate) creds: Creds,
    dir: String,
}

#[napi]
impl NativeTlsCreds {
    /// Loads `dir` for `endpoint` ('server': the destination, which reads
    /// server-cert.pem/server-key.pem; 'client': the source, client-*.pem),
    /// with ca-cert.pem and the optional ca-crl.pem. `authz` (server only)
    /// lists the client subject DNs let in. Rejects with the file at fault
    /// named.
    #[napi(ts_return_type = "Promise<NativeTlsCreds>")]
    pub fn load(dir: String, endpoint: String, authz: Option<Vec<String>>) -> Result<AsyncTask<Blocking<NativeTlsCreds>>> {
        let role = match endpoint.as_str() {
            "server" => Role::Server,
            "client" => Role::Client,
            _ => return Err(Error::new(Status::InvalidArg, format!("endpoint must be 'server' or 'client', got {endpoint:?}"))),
        };
        Ok(blocking(move || {
            let creds = load(&PathBuf::from(&dir), role, authz).map_err(|e| NativeError::new(e.errno, "tls-creds", "tls-creds", Some(&e.message)))?;
            Ok(NativeTlsCreds { creds, dir })
        }))
    }

    /// 'server' or 'client'.
    #[napi(getter)]
    pub fn endpoint(&self) -> String {
        match self.creds {
            Creds::Server(_) => "server".into(),
            Creds::Client(_) => "client".into(),
        }
    }

    /// The directory the credentials came from.
    #[napi(getter)]
    pub fn dir(&self) -> String {
        self.dir.clone()
    }
}
