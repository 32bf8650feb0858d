//! The `<name>-config` ConfigMap: postgresql.conf lines rendered from
//! spec.postgres.parameters and the archive settings. No I/O.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use super::child_meta;
use crate::api::keys;
use crate::controller::validate::ValidCluster;

/// Key of the rendered file in the ConfigMap (mounted at /etc/tandem/config).
pub const KEY_POSTGRESQL_CONF: &str = "postgresql.conf";

/// The ConfigMap holding the rendered parameters.
pub fn config_map(cluster: &ValidCluster) -> ConfigMap {
    ConfigMap {
        metadata: child_meta(cluster, keys::config_map(&cluster.name)),
        data: Some(BTreeMap::from([(
            KEY_POSTGRESQL_CONF.to_string(),
            render_postgresql_conf(cluster),
        )])),
        ..ConfigMap::default()
    }
}

/// postgresql.conf lines: the user's parameters sorted by name, then archiving.
/// Validation has refused managed parameters and multi-line values.
pub fn render_postgresql_conf(cluster: &ValidCluster) -> String {
    let mut out =
        String::from("# Rendered by the tandem operator from the DbCluster spec; do not edit.\n");
    for (name, value) in &cluster.spec.postgres.parameters {
        out.push_str(&format!("{name} = {}\n", quote(value)));
    }
    match &cluster.spec.archive.command {
        Some(command) => {
            out.push_str("archive_mode = 'on'\n");
            out.push_str(&format!("archive_command = {}\n", quote(command)));
        }
        None => out.push_str("archive_mode = 'off'\n"),
    }
    out
}

/// A postgresql.conf string literal: single quotes, with `'` doubled and `\` escaped.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::build::fixtures::cluster;

    #[test]
    fn parameters_are_rendered_sorted_and_quoted() {
        let c = cluster()
            .parameter("work_mem", "4MB")
            .parameter("max_connections", "200")
            .parameter("search_path", "'$user', public")
            .valid();
        let conf = render_postgresql_conf(&c);
        let lines: Vec<&str> = conf.lines().skip(1).collect();
        assert_eq!(
            lines,
            vec![
                "max_connections = '200'",
                "search_path = '''$user'', public'",
                "work_mem = '4MB'",
                "archive_mode = 'off'",
            ]
        );
    }

    #[test]
    fn archive_command_turns_archiving_on() {
        let c = cluster().archive(r"cp %p /archive/%f").valid();
        let conf = render_postgresql_conf(&c);
        assert!(conf.contains("archive_mode = 'on'\n"));
        assert!(conf.contains("archive_command = 'cp %p /archive/%f'\n"));
    }

    #[test]
    fn config_map_holds_the_file_under_its_key() {
        let c = cluster().valid();
        let cm = config_map(&c);
        assert_eq!(cm.metadata.name.as_deref(), Some("main-config"));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("db"));
        assert!(cm
            .data
            .unwrap_or_default()
            .contains_key(KEY_POSTGRESQL_CONF));
    }
}
