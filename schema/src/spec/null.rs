//! `null` means "left out" (contract v1.1, "Go control planes"): Go's `encoding/json` writes a
//! nil slice and an unset pointer as `null`, so a field that may be left out also takes
//! `null`, with the meaning of leaving it out. `Option` fields take `null` by themselves; these
//! are for the fields whose absence has another value (`[]`, `"any"`, 51820).
//!
//! Still one parse: JSON `null` becomes the default on the way in. Bincode has no `null` (every
//! field is always encoded), so its bytes stay exactly those of the field's own type.

use serde::{Deserialize, Deserializer};

/// A list: `null` is `[]`.
pub(crate) fn or_empty<'de, D, T>(de: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    or_else(de, T::default)
}

/// `Protocol`: `null` is `"any"`.
pub(super) fn or_any<'de, D: Deserializer<'de>>(de: D) -> Result<String, D::Error> {
    or_else(de, super::any)
}

/// `ListenPort`: `null` is 51820.
pub(super) fn or_default_listen_port<'de, D: Deserializer<'de>>(de: D) -> Result<u32, D::Error> {
    or_else(de, super::default_listen_port)
}

fn or_else<'de, D, T>(de: D, absent: fn() -> T) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    if de.is_human_readable() {
        Ok(Option::<T>::deserialize(de)?.unwrap_or_else(absent))
    } else {
        T::deserialize(de)
    }
}

/// `Egress`: `null` is `true`.
pub(crate) fn or_true<'de, D: Deserializer<'de>>(de: D) -> Result<bool, D::Error> {
    or_else(de, || true)
}
