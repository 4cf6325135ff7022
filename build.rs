//! Rebuilds when a migration is added or changed: `sqlx::migrate!` embeds the migrations at
//! compile time, and without this cargo does not know a new file in `migrations/` matters (as
//! sqlx's documentation says), so a build could run without it.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
