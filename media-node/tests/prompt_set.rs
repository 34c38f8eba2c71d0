//! The default prompt set in the repository's `prompts/` directory: every file is a prompt the
//! node can play, and it holds every prompt the examples and the node itself use.

use std::path::{Path, PathBuf};

use media_node::media::prompts::PromptStore;
use media_node::node;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn wav_files(dir: &Path, base: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).expect("prompts/ is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            wav_files(&path, base, out);
        } else if path.extension().is_some_and(|e| e == "wav") {
            let relative = path.strip_prefix(base).expect("inside prompts/");
            out.push(relative.to_string_lossy().into_owned());
        }
    }
}

#[test]
fn every_shipped_prompt_loads_as_8khz_audio_of_some_length() {
    let base = repo().join("prompts");
    let store = PromptStore::new(&base);
    let mut files = Vec::new();
    wav_files(&base, &base, &mut files);
    assert!(files.len() >= 40, "prompt set is incomplete: {files:?}");
    for file in files {
        let prompt = store.get(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
        // At least a quarter of a second: a word, not a click.
        assert!(prompt.samples().len() >= 2000, "{file} is too short");
    }
}

#[test]
fn the_prompt_set_has_every_prompt_the_examples_and_the_node_use() {
    let store = PromptStore::new(repo().join("prompts"));
    for example in ["examples/minimal.yaml", "examples/campus.yaml"] {
        let loaded = node::load(&repo().join(example)).expect("example loads");
        for prompt in node::prompts_used(&loaded.config) {
            store
                .get(&prompt)
                .unwrap_or_else(|e| panic!("{example} uses {prompt}: {e}"));
        }
    }
}
