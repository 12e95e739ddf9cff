//! The redb file underneath [`ReplayDb`](super::ReplayDb): durable write
//! transactions, loading and classifying what is on disk, moving a damaged
//! file aside.

use super::*;

/// One write transaction committed with immediate durability (an `fsync`
/// before it returns).
pub(super) fn write_txn<F>(db: &Database, f: F) -> Result<(), redb::Error>
where
    F: FnOnce(
        &mut redb::Table<'_, &'static [u8; 32], u64>,
        &mut redb::Table<'_, &'static str, u64>,
    ) -> Result<(), redb::Error>,
{
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    {
        let mut floors = txn.open_table(FLOORS)?;
        let mut meta = txn.open_table(META)?;
        f(&mut floors, &mut meta)?;
    }
    txn.commit()?;
    Ok(())
}

/// Raises each listed floor on disk (never lowers one).
pub(super) fn write_floors(
    floors: &mut redb::Table<'_, &'static [u8; 32], u64>,
    entries: &HashMap<IdentityKey, u64>,
) -> Result<(), redb::Error> {
    for (id, ts) in entries {
        let old = floors.get(&id.0)?.map(|g| g.value());
        let new = old.map_or(*ts, |o| o.max(*ts));
        if old != Some(new) {
            floors.insert(&id.0, new)?;
        }
    }
    Ok(())
}

/// Raises `meta[key]` to at least `value`; returns the value stored.
pub(super) fn raise_key(
    meta: &mut redb::Table<'_, &'static str, u64>,
    key: &str,
    value: u64,
) -> Result<u64, redb::Error> {
    let old = meta.get(key)?.map(|v| v.value());
    let new = old.map_or(value, |o| o.max(value));
    if old != Some(new) {
        meta.insert(key, new)?;
    }
    Ok(new)
}

pub(super) fn builder() -> redb::Builder {
    let mut b = redb::Builder::new();
    b.set_cache_size(CACHE_BYTES);
    // Verify every page's checksum at open: a damaged file is then reported
    // as corrupt (and moved aside) instead of trusted.
    b.set_check_integrity_on_open(true);
    b
}

/// Opens an existing file and reads its state. A panic inside redb (which a
/// damaged file can still provoke in a debug build) counts as corruption.
pub(super) fn load(path: &Path) -> Result<Loaded, LoadError> {
    let attempt = catch_unwind(AssertUnwindSafe(|| -> Result<_, redb::Error> {
        let db = builder().open(path)?;
        let state = read_state(&db)?;
        Ok((db, state))
    }));
    match attempt {
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".to_string());
            Err(LoadError::Corrupt(format!(
                "reading the file panicked: {what}"
            )))
        }
        Ok(Err(e)) => Err(classify(path, e)),
        Ok(Ok((db, state))) => {
            if let Some(v) = state.format.filter(|&v| v != FORMAT_VERSION) {
                return Err(LoadError::Corrupt(format!(
                    "format version {v}, expected {FORMAT_VERSION}"
                )));
            }
            Ok(Loaded {
                db,
                floors: state.floors,
                global: state.global,
                order_reserved: state.order_reserved,
                reserved: state.reserved,
            })
        }
    }
}

/// What a file holds, as read.
pub(super) struct State {
    floors: HashMap<IdentityKey, u64>,
    global: Option<u64>,
    format: Option<u64>,
    order_reserved: Option<u64>,
    reserved: Option<u64>,
}

pub(super) fn read_state(db: &Database) -> Result<State, redb::Error> {
    let txn = db.begin_read()?;
    let mut floors = HashMap::new();
    match txn.open_table(FLOORS) {
        Ok(t) => {
            floors.reserve(usize::try_from(t.len()?).unwrap_or(0));
            for row in t.iter()? {
                let (k, v) = row?;
                floors.insert(IdentityKey(*k.value()), v.value());
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let (global, format, order_reserved, reserved) = match txn.open_table(META) {
        Ok(t) => (
            t.get(KEY_GLOBAL)?.map(|v| v.value()),
            t.get(KEY_FORMAT)?.map(|v| v.value()),
            t.get(KEY_ORDER)?.map(|v| v.value()),
            t.get(KEY_RESERVED)?.map(|v| v.value()),
        ),
        Err(redb::TableError::TableDoesNotExist(_)) => (None, None, None, None),
        Err(e) => return Err(e.into()),
    };
    Ok(State {
        floors,
        global,
        format,
        order_reserved,
        reserved,
    })
}

/// Whether an error from opening or reading says the file's contents are
/// unusable (as opposed to a lock, permission or device problem).
pub(super) fn classify(path: &Path, e: redb::Error) -> LoadError {
    use redb::Error as E;
    match e {
        E::DatabaseAlreadyOpen | E::LockProtocolMismatch | E::WouldBlock => {
            LoadError::Fatal(StoreError::Locked {
                path: path.to_path_buf(),
            })
        }
        E::Corrupted(_)
        | E::UpgradeRequired(_)
        | E::TableTypeMismatch { .. }
        | E::TypeDefinitionChanged { .. }
        | E::TableIsMultimap(_)
        | E::TableIsNotMultimap(_) => LoadError::Corrupt(e.to_string()),
        E::Io(io)
            if matches!(
                io.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
            ) =>
        {
            LoadError::Corrupt(io.to_string())
        }
        e => LoadError::Fatal(db_err(path, e)),
    }
}

/// Renames a corrupt file to `<path>.corrupt-<now>` (with `-1`, `-2`, ... if
/// taken) and syncs the directory.
pub(super) fn move_aside(path: &Path, now_ms: u64) -> Result<PathBuf, StoreError> {
    let base = path.as_os_str().to_owned();
    for n in 0u32..1000 {
        let mut target = base.clone();
        target.push(format!(".corrupt-{now_ms}"));
        if n > 0 {
            target.push(format!("-{n}"));
        }
        let target = PathBuf::from(target);
        match fs::symlink_metadata(&target) {
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&target, "stat", e)),
        }
        fs::rename(path, &target).map_err(|e| io_err(path, "move corrupt file aside", e))?;
        sync_parent(path)?;
        return Ok(target);
    }
    Err(io_err(
        path,
        "move corrupt file aside",
        io::Error::new(io::ErrorKind::AlreadyExists, "no free .corrupt-<now> name"),
    ))
}

/// Makes a create or rename in `path`'s directory durable.
pub(super) fn sync_parent(path: &Path) -> Result<(), StoreError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, "sync directory", e))
}

pub(super) fn io_err(path: &Path, op: &'static str, source: io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

pub(super) fn db_err(path: &Path, source: redb::Error) -> StoreError {
    match source {
        redb::Error::DatabaseAlreadyOpen => StoreError::Locked {
            path: path.to_path_buf(),
        },
        source => StoreError::Db {
            path: path.to_path_buf(),
            source,
        },
    }
}
