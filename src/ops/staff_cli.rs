//! `lifeline staff …`: dashboard accounts. Passwords are read from standard input (one line),
//! never from the command line, where other users of the machine could see them.

use std::io::BufRead;

use chrono::Utc;
use clap::Subcommand;

use crate::config::valid_username;
use crate::password::hash_password;
use crate::store::{StaffAccountRow, Store};

/// The shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// The `staff` subcommands.
#[derive(Debug, Subcommand)]
pub enum StaffCommand {
    /// Create an account, or set its password (read from standard input).
    Add {
        username: String,
        /// The one clinic (tenant id) this account sees; all clinics when absent.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Remove an account made with `add` and end its sessions.
    Remove { username: String },
    /// Print the argon2 hash of a password read from standard input, for `[[staff]]` in the
    /// configuration file.
    Hash,
}

/// Checks that `tenant` is a clinic of the configuration the service runs with. `known` is that
/// configuration's clinic ids and where it came from, or `None` when none was given.
pub fn check_clinic(tenant: &str, known: Option<(&[&str], &str)>) -> Result<(), String> {
    match known {
        None => Err(format!(
            "cannot check that clinic {tenant:?} exists: no configuration is loaded; run with the \
             service's LIFELINE_CONFIG (or LIFELINE_CONFIG_TOML) and its secrets"
        )),
        Some((ids, _)) if ids.contains(&tenant) => Ok(()),
        Some(([], source)) => Err(format!(
            "no clinic {tenant:?}: the configuration ({source}) has no clinics"
        )),
        Some((ids, source)) => Err(format!(
            "no clinic {tenant:?} in the configuration ({source}); its clinics are: {}",
            ids.join(", ")
        )),
    }
}

fn read_password(input: &mut dyn BufRead) -> Result<String, String> {
    let mut line = String::new();
    input
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password: {e}"))?;
    let password = line.trim_end_matches(['\r', '\n']).to_string();
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!(
            "the password must be at least {MIN_PASSWORD_CHARS} characters"
        ));
    }
    Ok(password)
}

/// Runs one subcommand; returns the process exit code. `store` is only needed by `add`.
pub async fn run(
    store: Option<&dyn Store>,
    command: StaffCommand,
    input: &mut dyn BufRead,
    out: &mut dyn std::io::Write,
) -> i32 {
    let result = async {
        match command {
            StaffCommand::Hash => {
                let hash = hash_password(&read_password(input)?)?;
                writeln!(out, "{hash}").map_err(|e| e.to_string())
            }
            StaffCommand::Remove { username } => {
                let store = store.ok_or("no database")?;
                if !store
                    .delete_staff_account(&username)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    return Err(format!(
                        "no account {username} made with `staff add` (accounts in the configuration file are removed there)"
                    ));
                }
                store
                    .audit(
                        Utc::now(),
                        "cli",
                        "staff_removed",
                        serde_json::json!({ "username": username }),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                writeln!(out, "staff account {username} removed; its sessions are over")
                    .map_err(|e| e.to_string())
            }
            StaffCommand::Add { username, tenant } => {
                if !valid_username(&username) {
                    return Err(
                        "the username must be 1-64 of a-z, A-Z, 0-9, '.', '_', '-', '@'".into(),
                    );
                }
                let store = store.ok_or("no database")?;
                let hash = hash_password(&read_password(input)?)?;
                store
                    .upsert_staff_account(
                        &StaffAccountRow {
                            username: username.clone(),
                            password_hash: hash,
                            tenant_id: tenant.clone(),
                        },
                        Utc::now(),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                // A new password (or clinic) ends the sessions opened with the old one.
                let ended = store
                    .delete_sessions_of(&username)
                    .await
                    .map_err(|e| e.to_string())?;
                store
                    .audit(
                        Utc::now(),
                        "cli",
                        "staff_saved",
                        serde_json::json!({ "username": username, "tenant": tenant, "sessions_ended": ended }),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                writeln!(
                    out,
                    "staff account {username} saved ({})",
                    tenant.map_or("every clinic".to_string(), |t| format!("clinic {t}"))
                )
                .map_err(|e| e.to_string())
            }
        }
    }
    .await;
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("lifeline staff: {e}");
            1
        }
    }
}
