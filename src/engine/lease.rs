//! Work that one instance of a shared store should do at a time (forwarding the change
//! feed): a lease held by one engine among all those on the store.

use super::{Engine, Error};
use crate::store::Location;

/// A lease on a role: on PostgreSQL, a session advisory lock held on a connection of its
/// own, which PostgreSQL releases when its holder dies; on SQLite, always held (the file
/// has one serving process).
pub struct Lease {
    #[cfg(feature = "postgres")]
    lock: Option<crate::store::postgres::AdvisoryLock>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").finish_non_exhaustive()
    }
}

impl Lease {
    /// Whether this engine holds the lease now. Blocks for a round trip on PostgreSQL
    /// (call it from a thread that may block); tries to take the lease when it is free.
    pub fn held(&mut self) -> bool {
        #[cfg(feature = "postgres")]
        if let Some(lock) = &mut self.lock {
            return lock.held();
        }
        true
    }
}

impl Engine {
    /// A lease on `role` (e.g. `"forward"`) among every engine on this store; see
    /// [`Lease::held`].
    ///
    /// # Errors
    ///
    /// A PostgreSQL URL that does not parse.
    pub fn lease(&self, role: &str) -> Result<Lease, Error> {
        match self.location() {
            Location::Sqlite(_) => Ok(Lease {
                #[cfg(feature = "postgres")]
                lock: None,
            }),
            #[cfg(feature = "postgres")]
            Location::Postgres { url, schema } => Ok(Lease {
                lock: Some(crate::store::postgres::AdvisoryLock::new(
                    url, schema, role,
                )?),
            }),
            #[cfg(not(feature = "postgres"))]
            Location::Postgres { .. } => Ok(Lease {}),
        }
    }
}
