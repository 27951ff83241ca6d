//! PURE: `maven-metadata.xml` at the artifact level (groupId, artifactId,
//! versioning: latest, release, versions, lastUpdated), read with roxmltree
//! and written anew with one more version.

/// What the artifact-level metadata says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metadata {
    /// groupId.
    pub group: String,
    /// artifactId.
    pub artifact: String,
    /// Every version, oldest first.
    pub versions: Vec<String>,
}

/// Reads existing metadata; versions in the order the file lists them.
pub fn parse(xml: &str) -> Result<Metadata, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("not XML: {e}"))?;
    let root = doc.root_element();
    if root.tag_name().name() != "metadata" {
        return Err("the root element is not <metadata>".to_string());
    }
    let text = |name: &str| {
        root.children()
            .find(|n| n.has_tag_name(name))
            .and_then(|n| n.text())
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let versions = root
        .descendants()
        .filter(|n| {
            n.has_tag_name("version") && n.parent().is_some_and(|p| p.has_tag_name("versions"))
        })
        .filter_map(|n| n.text().map(|t| t.trim().to_string()))
        .filter(|v| !v.is_empty())
        .collect();
    Ok(Metadata {
        group: text("groupId"),
        artifact: text("artifactId"),
        versions,
    })
}

/// `existing` (or a new file) with `version` added as the latest and the
/// release; `updated` is `yyyyMMddHHmmss` in UTC.
pub fn with_version(
    existing: Option<Metadata>,
    group: &str,
    artifact: &str,
    version: &str,
    updated: &str,
) -> String {
    let mut versions = existing.map(|m| m.versions).unwrap_or_default();
    versions.retain(|v| v != version);
    versions.push(version.to_string());
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<metadata>\n");
    xml.push_str(&format!("  <groupId>{}</groupId>\n", escape(group)));
    xml.push_str(&format!(
        "  <artifactId>{}</artifactId>\n",
        escape(artifact)
    ));
    xml.push_str("  <versioning>\n");
    xml.push_str(&format!("    <latest>{}</latest>\n", escape(version)));
    if !version.ends_with("-SNAPSHOT") {
        xml.push_str(&format!("    <release>{}</release>\n", escape(version)));
    }
    xml.push_str("    <versions>\n");
    for v in &versions {
        xml.push_str(&format!("      <version>{}</version>\n", escape(v)));
    }
    xml.push_str("    </versions>\n");
    xml.push_str(&format!("    <lastUpdated>{updated}</lastUpdated>\n"));
    xml.push_str("  </versioning>\n</metadata>\n");
    xml
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXISTING: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<metadata modelVersion="1.1.0">
  <groupId>com.example</groupId>
  <artifactId>cart</artifactId>
  <versioning>
    <latest>1.1</latest>
    <release>1.1</release>
    <versions>
      <version>1.0</version>
      <version>1.1</version>
    </versions>
    <lastUpdated>20240101000000</lastUpdated>
  </versioning>
</metadata>"#;

    #[test]
    fn a_new_version_is_appended_and_becomes_latest_and_release() {
        let old = parse(EXISTING).expect("parses");
        assert_eq!(old.versions, ["1.0", "1.1"]);
        let xml = with_version(Some(old), "com.example", "cart", "1.2", "20261206150000");
        let new = parse(&xml).expect("parses");
        assert_eq!(new.versions, ["1.0", "1.1", "1.2"]);
        assert_eq!(
            (new.group.as_str(), new.artifact.as_str()),
            ("com.example", "cart")
        );
        assert!(xml.contains("<latest>1.2</latest>") && xml.contains("<release>1.2</release>"));
        assert!(xml.contains("<lastUpdated>20261206150000</lastUpdated>"));
    }

    #[test]
    fn republishing_a_version_lists_it_once_and_a_snapshot_is_no_release() {
        let xml = with_version(parse(EXISTING).ok(), "com.example", "cart", "1.0", "1");
        assert_eq!(parse(&xml).expect("parses").versions, ["1.1", "1.0"]);
        let xml = with_version(None, "g", "a", "2.0-SNAPSHOT", "1");
        assert!(!xml.contains("<release>"));
        assert!(parse("<html/>").is_err());
    }
}
