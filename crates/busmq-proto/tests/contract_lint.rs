//! Lints the contracts in `proto/` for what Python, Go and Java users rely
//! on (Google's API design guide, and busmq's own error catalogue), from the
//! descriptor set the build compiles, so a proto change that breaks a
//! convention fails the suite.

use busmq_core::Reason;
use prost::Message;
use prost_types::{FileDescriptorProto, FileDescriptorSet};

fn busmq_files() -> Vec<FileDescriptorProto> {
    let set = FileDescriptorSet::decode(busmq_proto::FILE_DESCRIPTOR_SET).unwrap();
    let files: Vec<_> = set
        .file
        .into_iter()
        .filter(|f| f.package().starts_with("busmq."))
        .collect();
    assert!(files.len() >= 6, "every busmq proto is in the set");
    files
}

/// Every comment of a file, with the path of the element it documents.
fn comments(file: &FileDescriptorProto) -> Vec<(Vec<i32>, String)> {
    let info = file
        .source_code_info
        .as_ref()
        .expect("the descriptor set keeps comments");
    info.location
        .iter()
        .map(|l| {
            let mut text = l.leading_comments().to_owned();
            text.push_str(l.trailing_comments());
            for detached in &l.leading_detached_comments {
                text.push_str(detached);
            }
            (l.path.clone(), text)
        })
        .filter(|(_, text)| !text.is_empty())
        .collect()
}

fn upper_snake(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[test]
fn every_file_names_its_go_and_java_packages() {
    for file in busmq_files() {
        let options = file.options.clone().unwrap_or_default();
        assert!(
            !options.go_package().is_empty(),
            "{}: go_package",
            file.name()
        );
        assert!(
            options.java_package().starts_with("io.busmq."),
            "{}: java_package",
            file.name()
        );
        assert!(
            options.java_multiple_files(),
            "{}: java_multiple_files",
            file.name()
        );
    }
}

#[test]
fn enums_start_at_unspecified_and_prefix_their_values() {
    let mut seen = 0;
    for file in busmq_files() {
        let nested = file.message_type.iter().flat_map(|m| m.enum_type.iter());
        for e in file.enum_type.iter().chain(nested) {
            seen += 1;
            let prefix = upper_snake(e.name());
            let zero = e
                .value
                .iter()
                .find(|v| v.number() == 0)
                .expect("a zero value");
            assert_eq!(zero.name(), format!("{prefix}_UNSPECIFIED"), "{}", e.name());
            for v in &e.value {
                assert!(v.name().starts_with(&format!("{prefix}_")), "{}", v.name());
            }
        }
    }
    assert!(seen >= 5);
}

#[test]
fn lengths_of_time_are_durations() {
    let units = [
        "_ms", "_millis", "_seconds", "_secs", "_sec", "_minutes", "_hours",
    ];
    for file in busmq_files() {
        for message in &file.message_type {
            for field in &message.field {
                assert!(
                    !units.iter().any(|u| field.name().ends_with(u)),
                    "{}.{}: a length of time is a google.protobuf.Duration",
                    message.name(),
                    field.name()
                );
            }
        }
    }
}

#[test]
fn comments_speak_protobuf_not_an_implementation() {
    let banned = [
        "u64",
        "u32",
        "i64",
        "..=",
        "`Storage` trait",
        "node-busmq",
        "Rust",
        "h2",
    ];
    for file in busmq_files() {
        for (_, text) in comments(&file) {
            for word in banned {
                let hit = text
                    .split(|c: char| !(c.is_alphanumeric() || "`.=-".contains(c)))
                    .any(|token| token == word || (word.len() > 3 && text.contains(word)));
                assert!(!hit, "{}: comment uses {word:?}: {text}", file.name());
            }
        }
    }
}

#[test]
fn every_public_rpc_lists_its_error_reasons_and_each_is_known() {
    const SERVICE: i32 = 6; // FileDescriptorProto.service
    const METHOD: i32 = 2; // ServiceDescriptorProto.method
    let mut rpcs = 0;
    for file in busmq_files()
        .into_iter()
        .filter(|f| f.package() == "busmq.v1")
    {
        let notes = comments(&file);
        for (s, service) in file.service.iter().enumerate() {
            for (m, method) in service.method.iter().enumerate() {
                rpcs += 1;
                let path = vec![SERVICE, s as i32, METHOD, m as i32];
                let text = notes
                    .iter()
                    .find(|(p, _)| *p == path)
                    .map(|(_, t)| t.as_str())
                    .unwrap_or_default();
                let (_, errors) = text.split_once("Errors").unwrap_or_else(|| {
                    panic!("{}.{} lists no errors", service.name(), method.name())
                });
                let reasons: Vec<&str> = errors
                    .split(|c: char| !(c.is_ascii_uppercase() || c == '_'))
                    .filter(|w| w.len() > 3 && w.contains('_'))
                    .collect();
                // "Errors: as Push" refers to another RPC's list.
                let refers = errors
                    .trim_start_matches(':')
                    .trim_start()
                    .starts_with("as ");
                assert!(
                    !reasons.is_empty() || refers,
                    "{}: no reason named",
                    method.name()
                );
                for reason in reasons {
                    assert!(
                        Reason::parse(reason).is_some(),
                        "{}.{}: unknown reason {reason}",
                        service.name(),
                        method.name()
                    );
                }
            }
        }
    }
    assert!(rpcs >= 20);
}

#[test]
fn every_reason_is_documented() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/errors.md"))
        .unwrap();
    for reason in Reason::ALL {
        assert!(
            doc.contains(&format!("| `{reason}` |")),
            "docs/errors.md lacks {reason}"
        );
    }
}

#[test]
fn the_storage_contract_reuses_public_messages() {
    // A message is its fields: a storage message with the very fields of a
    // public one is a copy that should be an import.
    let shape = |m: &prost_types::DescriptorProto| {
        m.field
            .iter()
            .map(|f| (f.name().to_owned(), f.r#type(), f.type_name().to_owned()))
            .collect::<Vec<_>>()
    };
    let files = busmq_files();
    let public: Vec<(String, _)> = files
        .iter()
        .filter(|f| f.package() == "busmq.v1")
        .flat_map(|f| {
            f.message_type
                .iter()
                .map(|m| (m.name().to_owned(), shape(m)))
        })
        .collect();
    let mut checked = 0;
    for file in files.iter().filter(|f| f.package() == "busmq.storage.v1") {
        for message in &file.message_type {
            checked += 1;
            let fields = shape(message);
            // One field (a name) is a request shape, not a concept.
            if fields.len() < 2 {
                continue;
            }
            if let Some((name, _)) = public.iter().find(|(_, f)| *f == fields) {
                panic!(
                    "busmq.storage.v1.{} has the fields of busmq.v1.{name}: import it instead",
                    message.name()
                );
            }
        }
    }
    assert!(checked > 20);
}
