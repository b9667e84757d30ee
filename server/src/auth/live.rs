//! The tenants table in force ([`LiveTenants`]): readers take a snapshot,
//! a reload (SIGHUP) swaps the whole table or, when the file cannot be
//! loaded, keeps the one in force; streams follow it and end once their
//! credential no longer authenticates.
//!
//! It must never leave a half-loaded table in force.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{Credential, Tenants, TenantsError};
use crate::watch::TenantId;

/// The current tenants table, swapped whole when the file is reloaded.
/// Readers take a snapshot ([`LiveTenants::current`]); streams follow
/// [`LiveTenants::subscribe`] to end when their credential is revoked.
#[derive(Clone)]
pub struct LiveTenants {
    current: Arc<tokio::sync::watch::Sender<Arc<Tenants>>>,
    path: Option<PathBuf>,
}

impl LiveTenants {
    /// The table in `path`, or the open single tenant without one.
    pub fn load(path: Option<&Path>) -> Result<Self, TenantsError> {
        let tenants = match path {
            Some(path) => Tenants::load(path)?,
            None => Tenants::open(),
        };
        Ok(Self {
            current: Arc::new(tokio::sync::watch::channel(Arc::new(tenants)).0),
            path: path.map(Path::to_owned),
        })
    }

    /// A fixed table that is never reloaded.
    pub fn fixed(tenants: Tenants) -> Self {
        Self {
            current: Arc::new(tokio::sync::watch::channel(Arc::new(tenants)).0),
            path: None,
        }
    }

    pub fn current(&self) -> Arc<Tenants> {
        self.current.borrow().clone()
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Arc<Tenants>> {
        self.current.subscribe()
    }

    /// Reads the tenants file again and swaps the table in whole; a file that
    /// cannot be read or is invalid leaves the current table in place. What
    /// SIGHUP does. Without a tenants file there is nothing to reload.
    pub fn reload(&self) -> Result<(), TenantsError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let tenants = Tenants::load(path)?;
        self.current.send_replace(Arc::new(tenants));
        Ok(())
    }

    /// Resolves once `credential` no longer authenticates as `tenant`.
    pub fn revoked(
        &self,
        credential: Credential,
        tenant: TenantId,
    ) -> impl Future<Output = ()> + Send + 'static {
        let changes = self.subscribe();
        revoked(changes, credential, tenant)
    }
}

async fn revoked(
    mut changes: tokio::sync::watch::Receiver<Arc<Tenants>>,
    credential: Credential,
    tenant: TenantId,
) {
    loop {
        if !changes.borrow_and_update().admits(&credential, &tenant) {
            return;
        }
        if changes.changed().await.is_err() {
            // The table can no longer change.
            return std::future::pending().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tests::digest;

    #[test]
    fn reload_swaps_the_table_whole_or_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tenants.toml");
        let file = |token: &str| {
            format!(
                "[[tenant]]\nid = \"acme\"\ntoken_sha256 = [\"{}\"]\nbuckets = [\"*\"]\n",
                digest(token)
            )
        };
        std::fs::write(&path, file("old")).unwrap();
        let live = LiveTenants::load(Some(&path)).unwrap();
        let (acme, old) = live.current().identify(Some("Bearer old"), None).unwrap();

        std::fs::write(&path, "[[tenant]]\nid = ").unwrap();
        assert!(live.reload().is_err());
        assert!(
            live.current().admits(&old, &acme),
            "a bad file keeps the table in force"
        );

        std::fs::write(&path, file("new")).unwrap();
        live.reload().unwrap();
        assert!(
            !live.current().admits(&old, &acme),
            "the old token is revoked"
        );
        assert!(live.current().authenticate(Some("Bearer new")).is_ok());
    }

    #[tokio::test]
    async fn revoked_resolves_when_a_reload_drops_the_credential() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tenants.toml");
        let file = |tokens: &str| {
            format!("[[tenant]]\nid = \"acme\"\ntoken_sha256 = [{tokens}]\nbuckets = [\"*\"]\n")
        };
        let both = format!("\"{}\", \"{}\"", digest("kept"), digest("dropped"));
        std::fs::write(&path, file(&both)).unwrap();
        let live = LiveTenants::load(Some(&path)).unwrap();
        let (acme, kept) = live.current().identify(Some("Bearer kept"), None).unwrap();
        let (_, dropped) = live
            .current()
            .identify(Some("Bearer dropped"), None)
            .unwrap();
        let mut kept_revoked = Box::pin(live.revoked(kept, acme.clone()));
        let dropped_revoked = live.revoked(dropped, acme);

        std::fs::write(&path, file(&format!("\"{}\"", digest("kept")))).unwrap();
        live.reload().unwrap();
        dropped_revoked.await;
        assert!(
            futures::poll!(&mut kept_revoked).is_pending(),
            "a credential still in the file stays valid"
        );
    }
}
