//! Secrets from a command (`{ command = [...] }`) through `deploy` and
//! `check` on the `local` stage with examples/hello: the value reaches the
//! secret config file and no output, the command runs once per invocation
//! with the operator's environment minus the variables holding secrets, and
//! a failing command is named with its stderr masked.

mod common;
use common::exited_saying;

use common::{Project, text};

/// The hello project whose `local` secret comes from `sh vault.sh prod/db`.
fn project_with_vault(script: &str) -> Project {
    let project = Project::with_config(|c| {
        c.replacen(
            "secrets = { db_password = { env = \"HELLO_DB_PASSWORD\" } }",
            "secrets = { db_password = { command = [\"sh\", \"vault.sh\", \"prod/db\"], timeout = \"20s\" } }",
            1,
        )
    });
    std::fs::write(project.path().join("vault.sh"), script).unwrap();
    project
}

#[test]
fn a_command_secret_reaches_the_secret_file_once_and_no_output() {
    let value = format!("cmd-{}", common::unique_secret());
    let script = format!(
        "echo \"$1 token=${{VAULT_TOKEN:-unset}} env_secret=${{HELLO_DB_PASSWORD:-unset}}\" >> vault.log\nprintf '%s\\n' '{value}'\n"
    );
    let project = project_with_vault(&script);
    let jar = common::hello_jar().to_string_lossy().into_owned();
    let out = project
        .command(&["deploy", "local", "--artifact", &jar, "--version", "v1"])
        .env("VAULT_TOKEN", "tok-for-the-vault")
        .output()
        .unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(!said.contains(&value), "the secret leaked: {said}");
    let current = project.current().unwrap();
    let db = std::fs::read_to_string(
        project
            .lib()
            .join("releases")
            .join(&current)
            .join("config/database.properties"),
    )
    .unwrap();
    assert!(db.contains(&format!("password={value}\n")), "{db}");
    // Once for the whole invocation; the operator's environment, without the
    // variable that holds a secret in another stage.
    let log = std::fs::read_to_string(project.path().join("vault.log")).unwrap();
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        ["prod/db token=tok-for-the-vault env_secret=unset"],
        "{log}"
    );
}

#[test]
fn a_failing_command_is_named_with_its_stderr_masked() {
    let value = format!("cmd-{}", common::unique_secret());
    let script =
        format!("echo '{value}'\necho \"vault: permission denied reading {value}\" >&2\nexit 7\n");
    let project = project_with_vault(&script);
    let out = project.run(&["check", "local", "--no-hosts"]);
    let said = exited_saying(&out, 2, "secret `db_password`");
    assert!(said.contains("sh vault.sh prod/db"), "{said}");
    assert!(said.contains("exited with code 7"), "{said}");
    assert!(
        said.contains("vault: permission denied reading ********"),
        "{said}"
    );
    assert!(!said.contains(&value), "the secret leaked: {said}");
}
