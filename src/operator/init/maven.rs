//! `pom.xml`: the service name, version and the exact path of the runnable
//! jar Maven makes (assembly, shade, or the plain jar), and how the project
//! builds offline.

use std::collections::BTreeMap;
use std::path::Path;

use roxmltree::{Document, Node};

use super::{Detected, Tool};

/// Reads `dir/pom.xml`.
pub fn detect(dir: &Path) -> Result<Detected, String> {
    let text = std::fs::read_to_string(dir.join("pom.xml"))
        .map_err(|e| format!("cannot read pom.xml: {e}"))?;
    let doc = Document::parse(&text).map_err(|e| format!("pom.xml: {e}"))?;
    let project = doc.root_element();
    if project.tag_name().name() != "project" {
        return Err("pom.xml: the root element is not <project>".into());
    }
    let parent = child(project, "parent");
    let artifact_id =
        text_of(project, "artifactId").ok_or_else(|| "pom.xml has no <artifactId>".to_string())?;
    let version =
        text_of(project, "version").or_else(|| parent.and_then(|p| text_of(p, "version")));
    let mut props = Props::new(project, &artifact_id, version.as_deref());
    let build = child(project, "build");
    let final_name = match build.and_then(|b| text_of(b, "finalName")) {
        Some(name) => props.expand(&name, "<build><finalName>")?,
        None => match &version {
            Some(v) => format!("{artifact_id}-{}", props.expand(v, "<version>")?),
            None => return Err("pom.xml has neither <version> nor <build><finalName>".into()),
        },
    };
    props.set("project.build.finalName", &final_name);
    let mut notes = Vec::new();
    let plugins: Vec<Node> = build
        .and_then(|b| child(b, "plugins"))
        .map(|p| children(p, "plugin").collect())
        .unwrap_or_default();
    let artifact = if let Some(plugin) = plugins
        .iter()
        .find(|p| plugin_is(**p, "maven-shade-plugin"))
    {
        shade_artifact(*plugin, &final_name, &props, &mut notes)?
    } else if let Some(plugin) = plugins
        .iter()
        .find(|p| plugin_is(**p, "maven-assembly-plugin"))
    {
        assembly_artifact(dir, *plugin, &final_name, &props, &mut notes)?
    } else {
        notes.push(format!(
            "pom.xml has no assembly or shade plugin: target/{final_name}.jar is the plain jar, without its dependencies"
        ));
        format!("target/{final_name}.jar")
    };
    let version = match version {
        Some(v) => Some(props.expand(&v, "<version>")?),
        None => None,
    };
    Ok(Detected {
        tool: Tool::Maven,
        name: Some(artifact_id),
        version,
        command: command(dir, &mut notes),
        artifact,
        notes,
    })
}

/// Where `mvn deploy` publishes (`<distributionManagement>`'s repository,
/// else its snapshot repository) with the coordinates: URL, groupId,
/// artifactId. `None` without pom.xml or without the section.
pub fn distribution(dir: &Path) -> Option<(String, String, String)> {
    let text = std::fs::read_to_string(dir.join("pom.xml")).ok()?;
    let doc = Document::parse(&text).ok()?;
    let project = doc.root_element();
    let dm = child(project, "distributionManagement")?;
    let url = ["repository", "snapshotRepository"]
        .iter()
        .find_map(|r| child(dm, r).and_then(|r| text_of(r, "url")))?;
    let group = text_of(project, "groupId")
        .or_else(|| child(project, "parent").and_then(|p| text_of(p, "groupId")))?;
    let artifact = text_of(project, "artifactId")?;
    // A URL still holding `${…}` (a property from settings) cannot be written as it is.
    (!url.contains("${") && url.starts_with("http")).then_some((url, group, artifact))
}

/// The build command: `build.sh` when the project has one, else Maven (or
/// the wrapper), offline when `settings.xml` mirrors to a local repository.
fn command(dir: &Path, notes: &mut Vec<String>) -> String {
    if dir.join("build.sh").is_file() {
        let (command, note) = super::script::command(dir, "build.sh");
        notes.push(note);
        return command;
    }
    let mvn = if dir.join("mvnw").is_file() {
        "./mvnw"
    } else {
        "mvn"
    };
    if dir.join(".mvn/maven.config").is_file() {
        notes.push("build: Maven also reads .mvn/maven.config".into());
    }
    match std::fs::read_to_string(dir.join("settings.xml"))
        .ok()
        .and_then(|text| local_mirror(&text))
    {
        Some(url) => {
            notes.push(format!(
                "build: offline, settings.xml mirrors the repositories to {url}"
            ));
            format!("{mvn} -o -s settings.xml -Daether.offline.protocols=file -q package")
        }
        None if dir.join("settings.xml").is_file() => {
            format!("{mvn} -s settings.xml -q package -DskipTests")
        }
        None => format!("{mvn} -q package -DskipTests"),
    }
}

/// The `file://` URL settings.xml mirrors repositories to, if any.
fn local_mirror(text: &str) -> Option<String> {
    let doc = Document::parse(text).ok()?;
    let mirrors = child(doc.root_element(), "mirrors")?;
    children(mirrors, "mirror")
        .filter_map(|m| text_of(m, "url"))
        .find(|url| url.starts_with("file:"))
}

/// The jar the shade plugin writes.
fn shade_artifact(
    plugin: Node,
    final_name: &str,
    props: &Props,
    notes: &mut Vec<String>,
) -> Result<String, String> {
    let setting = |name: &str| -> Result<Option<String>, String> {
        match configurations(plugin).find_map(|c| text_of(c, name)) {
            Some(v) => props.expand(&v, name).map(Some),
            None => Ok(None),
        }
    };
    if let Some(output) = setting("outputFile")? {
        let path = output
            .strip_prefix("${project.build.directory}/")
            .map(|rest| format!("target/{rest}"))
            .unwrap_or(output);
        notes.push(format!("artifact: the shade plugin's <outputFile> {path}"));
        return Ok(path);
    }
    let attached = setting("shadedArtifactAttached")?.is_some_and(|v| v == "true");
    let path = if attached {
        let classifier = setting("shadedClassifierName")?.unwrap_or_else(|| "shaded".into());
        format!("target/{final_name}-{classifier}.jar")
    } else {
        // Without attaching, the shaded jar replaces the main artifact; its
        // own <finalName> renames it.
        let name = setting("finalName")?.unwrap_or_else(|| final_name.to_string());
        format!("target/{name}.jar")
    };
    notes.push(format!("artifact: the shade plugin's jar {path}"));
    Ok(path)
}

/// The jar the assembly plugin writes: `<finalName>-<assembly id>.jar`.
fn assembly_artifact(
    dir: &Path,
    plugin: Node,
    final_name: &str,
    props: &Props,
    notes: &mut Vec<String>,
) -> Result<String, String> {
    let mut ids = Vec::new();
    let mut append_id = true;
    let mut name = final_name.to_string();
    for config in configurations(plugin) {
        if let Some(refs) = child(config, "descriptorRefs") {
            ids.extend(children(refs, "descriptorRef").filter_map(text));
        }
        let files = child(config, "descriptors")
            .map(|d| {
                children(d, "descriptor")
                    .filter_map(text)
                    .collect::<Vec<_>>()
            })
            .into_iter()
            .flatten()
            .chain(text_of(config, "descriptor"));
        for file in files {
            let file = props.expand(&file, "<descriptor>")?;
            ids.push(descriptor_id(dir, &file)?);
        }
        if text_of(config, "appendAssemblyId").is_some_and(|v| v == "false") {
            append_id = false;
        }
        if let Some(n) = text_of(config, "finalName") {
            name = props.expand(&n, "<finalName>")?;
        }
    }
    ids.dedup();
    let path = match ids.as_slice() {
        [] => {
            return Err(
                "pom.xml: maven-assembly-plugin names no descriptor or descriptorRef".into(),
            );
        }
        _ if !append_id => format!("target/{name}.jar"),
        [id] => format!("target/{name}-{id}.jar"),
        [first, ..] => {
            notes.push(format!(
                "pom.xml has {} assemblies ({}); the artifact is the first",
                ids.len(),
                ids.join(", ")
            ));
            format!("target/{name}-{first}.jar")
        }
    };
    notes.push(format!("artifact: the assembly `{}` {path}", ids[0]));
    Ok(path)
}

/// The `<id>` of an assembly descriptor file.
fn descriptor_id(dir: &Path, file: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(dir.join(file))
        .map_err(|e| format!("pom.xml names the assembly descriptor {file}: {e}"))?;
    let doc = Document::parse(&text).map_err(|e| format!("{file}: {e}"))?;
    text_of(doc.root_element(), "id").ok_or_else(|| format!("{file} has no <id>"))
}

/// The plugin's own `<configuration>` and its executions'.
fn configurations<'a>(plugin: Node<'a, 'a>) -> impl Iterator<Item = Node<'a, 'a>> {
    let executions = child(plugin, "executions")
        .into_iter()
        .flat_map(|e| children(e, "execution"))
        .filter_map(|e| child(e, "configuration"));
    child(plugin, "configuration").into_iter().chain(executions)
}

fn plugin_is(plugin: Node, artifact_id: &str) -> bool {
    text_of(plugin, "artifactId").as_deref() == Some(artifact_id)
}

fn child<'a>(node: Node<'a, 'a>, name: &str) -> Option<Node<'a, 'a>> {
    node.children()
        .find(|n| n.is_element() && n.tag_name().name() == name)
}

fn children<'a>(node: Node<'a, 'a>, name: &'a str) -> impl Iterator<Item = Node<'a, 'a>> {
    node.children()
        .filter(move |n| n.is_element() && n.tag_name().name() == name)
}

fn text(node: Node) -> Option<String> {
    let t = node.text()?.trim();
    (!t.is_empty()).then(|| t.to_string())
}

fn text_of(node: Node, name: &str) -> Option<String> {
    child(node, name).and_then(text)
}

/// `${…}` references a pom may use in the values `init` reads.
struct Props(BTreeMap<String, String>);

impl Props {
    fn new(project: Node, artifact_id: &str, version: Option<&str>) -> Props {
        let mut map = BTreeMap::new();
        if let Some(props) = child(project, "properties") {
            for p in props.children().filter(|n| n.is_element()) {
                map.insert(
                    p.tag_name().name().to_string(),
                    p.text().unwrap_or("").trim().to_string(),
                );
            }
        }
        for key in ["project.artifactId", "pom.artifactId", "artifactId"] {
            map.insert(key.into(), artifact_id.into());
        }
        if let Some(v) = version {
            for key in ["project.version", "pom.version", "version"] {
                map.insert(key.into(), v.into());
            }
        }
        if let Some(g) = text_of(project, "groupId") {
            map.insert("project.groupId".into(), g);
        }
        map.insert("project.build.directory".into(), "target".into());
        map.insert("project.basedir".into(), ".".into());
        map.insert("basedir".into(), ".".into());
        Props(map)
    }

    fn set(&mut self, key: &str, value: &str) {
        self.0.insert(key.into(), value.into());
    }

    /// `value` with every `${name}` replaced; an unknown name is an error
    /// naming it (a guess would be a wrong path).
    fn expand(&self, value: &str, what: &str) -> Result<String, String> {
        let mut out = value.to_string();
        for _ in 0..64 {
            let Some(start) = out.find("${") else {
                return Ok(out);
            };
            let Some(len) = out[start..].find('}') else {
                return Err(format!("pom.xml: {what} `{value}` has an unclosed ${{"));
            };
            let name = &out[start + 2..start + len];
            let Some(replacement) = self.0.get(name) else {
                return Err(format!(
                    "pom.xml: {what} `{value}` uses ${{{name}}}, which init cannot resolve; set [build] artifact by hand"
                ));
            };
            out = format!("{}{replacement}{}", &out[..start], &out[start + len + 1..]);
        }
        Err(format!(
            "pom.xml: {what} `{value}`: properties refer to each other too deeply"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::distribution;

    #[test]
    fn distribution_management_gives_the_repository_and_coordinates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pom = r#"<project><groupId>com.example</groupId><artifactId>cart</artifactId>
            <distributionManagement>
              <snapshotRepository><url>https://repo.example.com/snapshots</url></snapshotRepository>
              <repository><id>r</id><url>https://repo.example.com/releases</url></repository>
            </distributionManagement></project>"#;
        std::fs::write(dir.path().join("pom.xml"), pom).expect("pom");
        assert_eq!(
            distribution(dir.path()),
            Some((
                "https://repo.example.com/releases".into(),
                "com.example".into(),
                "cart".into()
            ))
        );
        std::fs::write(
            dir.path().join("pom.xml"),
            "<project><groupId>g</groupId><artifactId>a</artifactId></project>",
        )
        .expect("pom");
        assert_eq!(distribution(dir.path()), None);
    }
}
