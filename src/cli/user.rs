//! `paxosdb user add | delete | list | token | revoke-token`: user management on a running cluster
//! (admin only; see [`crate::auth`]). The caller's own credentials come from the global
//! `--user` / `--password-file` / `--token` flags or `PAXOSDB_USER`, `PAXOSDB_PASSWORD`,
//! `PAXOSDB_TOKEN`. A new user's password is read from a file or from
//! `PAXOSDB_NEW_PASSWORD`, never from the command line (where `ps` would show it).

use super::{client, Cli, ClientArgs, NoArgs, WithClient};
use crate::error::{Error, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Creates a user, or changes an existing one.
    Add(WithClient<AddArgs>),
    /// Deletes a user with its passwords and tokens.
    Delete(WithClient<NameArgs>),
    /// Lists the users (never their secrets).
    List(WithClient<NoArgs>),
    /// Creates a bearer token for a user and prints it (once); its id (for revoke-token)
    /// goes to stderr.
    Token(WithClient<NameArgs>),
    /// Revokes one token of a user, by its id (`user list`) or the whole token; the
    /// user's other tokens and passwords stay.
    RevokeToken(WithClient<RevokeArgs>),
}

impl UserCommand {
    /// The client flags given after the subcommand's name.
    pub fn client_args(&self) -> &ClientArgs {
        match self {
            UserCommand::Add(a) => &a.client,
            UserCommand::Delete(a) | UserCommand::Token(a) => &a.client,
            UserCommand::List(a) => &a.client,
            UserCommand::RevokeToken(a) => &a.client,
        }
    }
}

#[derive(Args, Debug)]
pub struct RevokeArgs {
    pub name: String,
    /// The token's id (the part between the dots of <user>.<id>.<secret>), or the token.
    /// (Not named `token`: that is the id of the global --token, the caller's own.)
    #[arg(value_name = "TOKEN_ID")]
    pub which: String,
}

#[derive(Args, Debug)]
pub struct AddArgs {
    pub name: String,
    /// read, readwrite or admin (a new user defaults to read).
    #[arg(long)]
    pub role: Option<String>,
    /// Restrict the user to keys starting with this.
    #[arg(long)]
    pub prefix: Option<String>,
    /// File whose first line is the user's password.
    #[arg(long, env = "PAXOSDB_NEW_PASSWORD_FILE")]
    pub new_password_file: Option<PathBuf>,
    /// The user's password (prefer --new-password-file).
    #[arg(long, env = "PAXOSDB_NEW_PASSWORD", hide_env_values = true)]
    pub new_password: Option<String>,
}

#[derive(Args, Debug)]
pub struct NameArgs {
    pub name: String,
}

pub async fn run(cli: &Cli, cmd: &UserCommand) -> Result<ExitCode> {
    let c = client(cli)?;
    match cmd {
        UserCommand::Add(WithClient { args: a, .. }) => {
            let password = match (&a.new_password_file, &a.new_password) {
                (Some(f), _) => Some(
                    String::from_utf8(crate::server::read_password_file(f)?)
                        .map_err(|_| Error::invalid("the password must be UTF-8"))?,
                ),
                (None, Some(p)) => Some(p.clone()),
                (None, None) => None,
            };
            c.set_user(
                &a.name,
                password.as_deref(),
                a.role.as_deref(),
                a.prefix.as_deref().map(str::as_bytes),
            )
            .await?;
            println!("user {} saved", a.name);
        }
        UserCommand::Delete(WithClient { args: a, .. }) => {
            if !c.delete_user(&a.name).await? {
                eprintln!("no user {}", a.name);
                return Ok(ExitCode::from(1));
            }
            println!("user {} deleted", a.name);
        }
        UserCommand::List(_) => {
            for u in c.list_users().await? {
                println!(
                    "{}\t{}\t{}\tprefix={:?}\tpasswords={}\ttokens={}",
                    u.name,
                    u.role,
                    if u.enabled { "on" } else { "off" },
                    String::from_utf8_lossy(&u.prefix),
                    u.passwords,
                    u.token_ids.join(",")
                );
            }
        }
        UserCommand::Token(WithClient { args: a, .. }) => {
            let token = c.create_token(&a.name).await?;
            println!("{token}");
            if let Some(id) = crate::auth::token_id(&token) {
                eprintln!(
                    "token id {id} (revoke it with: paxosdb user revoke-token {} {id})",
                    a.name
                );
            }
        }
        UserCommand::RevokeToken(WithClient { args: a, .. }) => {
            c.revoke_token(&a.name, &a.which).await?;
            println!("token revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}
