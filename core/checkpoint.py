"""The checkpoint contract: the files a training run writes and ``crops export`` reads.

Layouts (each tower folder is a sentence-transformers / Hugging Face model folder):

- shared towers: one model folder at the checkpoint root;
- separate towers: ``query/`` and ``doc/`` sub-folders, each a model folder;
- adapter recipe: ``crops_adapter.json`` (names the frozen base model) + ``adapter.pt`` (one linear
  map per tower applied to the pooled, unit-length embedding, then L2 norm again).

``crops_checkpoint.json`` records the run, including the token limits it trained with
(``max_query_tokens``, ``max_doc_tokens``); export copies it into the bundle manifest and refuses
other limits unless told to (see ``model_export.export``).
"""

from __future__ import annotations

from typing import Final

CHECKPOINT_SCHEMA_VERSION: Final = 1

CHECKPOINT_META: Final = "crops_checkpoint.json"
ADAPTER_META: Final = "crops_adapter.json"
ADAPTER_WEIGHTS: Final = "adapter.pt"
QUERY_TOWER: Final = "query"
DOC_TOWER: Final = "doc"
MODEL_CONFIG: Final = "config.json"
TOKENIZER_FILE: Final = "tokenizer.json"
#: Tokenizer files copied next to a trained tower when the base model has them.
TOKENIZER_FILES: Final[tuple[str, ...]] = (TOKENIZER_FILE, "tokenizer_config.json", "vocab.txt",
                                           "special_tokens_map.json")
#: sentence-transformers files that describe pooling, Dense and Normalize layers.
ST_MODULES: Final = "modules.json"
ST_FILES: Final[tuple[str, ...]] = (ST_MODULES, "sentence_bert_config.json", "config_sentence_transformers.json")

#: Keys of ``crops_checkpoint.json`` that export reads.
META_MAX_QUERY_TOKENS: Final = "max_query_tokens"
META_MAX_DOC_TOKENS: Final = "max_doc_tokens"
META_SCHEMA_VERSION: Final = "checkpoint_schema_version"
