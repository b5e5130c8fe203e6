"""The vocabulary a checkpoint stores (its task state): a task without a training split takes it, one built
otherwise gives way to it, and where the checkpoint holds none the task's reason for having no vocabulary stands."""
import logging
import shutil

import pytest
from omegaconf import OmegaConf

from unival.data_utils.demo_corpus import write_demo_corpus
from unival.tasks.caption import CaptionConfig, CaptionTask
from unival.tasks.vqa_gen import VqaGenConfig, VqaGenTask

from task_files import build_tiny_model, setup_task


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stored_vocabulary") / "data"
    write_demo_corpus(folder, seed=4, num_images=(4, 2, 2), modalities=("image",))
    return folder


def only_splits(corpus, folder, prefix, splits=("test",), answers=False):
    """``folder`` holding ``corpus``'s ``prefix`` files of ``splits`` only (no training split)."""
    folder.mkdir()
    for split in splits:
        shutil.copy(corpus / f"{prefix}_{split}.tsv", folder)
    if answers:
        shutil.copy(corpus / "answers.txt", folder)
    return folder


def caption_task(folder):
    return setup_task(CaptionTask, CaptionConfig, folder, prefix="caption", eval_cider=False)


def test_a_task_without_training_split_takes_the_checkpoints_vocabulary(corpus, tmp_path):
    trained = caption_task(corpus)
    state = trained.state_dict()
    assert state["vocabulary"] == trained.dictionary.symbols and len(state["vocabulary"]) == len(trained.dictionary)

    task = caption_task(only_splits(corpus, tmp_path / "test_only", "caption"))
    held = task.target_dictionary  # as fairseq-generate holds it before it reads the checkpoint
    with pytest.raises(FileNotFoundError, match=r"without --dict-file the vocabulary is built from the training "
                                                r"split: split 'train': .*caption_train.tsv not found"):
        task.load_dataset("test")
    task.load_state_dict(state)
    assert held is task.target_dictionary and held.symbols == trained.dictionary.symbols
    assert held.indices == trained.dictionary.indices
    task.load_dataset("test")
    trained.load_dataset("test")
    sample, expected = task.dataset("test")[0], trained.dataset("test")[0]
    assert sample["source"].tolist() == expected["source"].tolist()
    assert sample["target"].tolist() == expected["target"].tolist() and task.decode(sample["target"])
    assert task.state_dict()["vocabulary"] == state["vocabulary"]  # stored again by a run that adopted it


def test_a_checkpoint_without_vocabulary_leaves_the_reason(corpus, tmp_path):
    task = caption_task(only_splits(corpus, tmp_path / "test_only", "caption"))
    task.load_state_dict({})
    assert "vocabulary" not in task.state_dict()
    with pytest.raises(FileNotFoundError, match=r"caption_train.tsv not found .*the --dict-file the model was "
                                                r"trained with\); the checkpoint does not store its vocabulary"):
        task.build_model(None, from_checkpoint=True)


def test_a_differently_built_vocabulary_gives_way_with_a_warning(corpus, tmp_path, caplog):
    trained = caption_task(corpus)
    other = only_splits(corpus, tmp_path / "other", "caption", splits=("test",))
    shutil.copy(corpus / "caption_valid.tsv", other / "caption_train.tsv")  # another corpus, another vocabulary
    task = caption_task(other)
    assert task.dictionary.symbols != trained.dictionary.symbols
    with caplog.at_level(logging.WARNING):
        task.load_state_dict(trained.state_dict())
    assert task.dictionary.symbols == trained.dictionary.symbols
    assert "the vocabulary built from" in caplog.text and "differs from the vocabulary the model was trained " \
        "with, which the checkpoint holds" in caplog.text and "the model's is used" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        task.load_state_dict(trained.state_dict())  # now the same: nothing to say
    assert not caplog.text


def test_vqa_answer_candidates_are_made_from_the_adopted_vocabulary(corpus, tmp_path):
    vqa = setup_task(VqaGenTask, VqaGenConfig, corpus, prefix="vqa")
    task = setup_task(VqaGenTask, VqaGenConfig, only_splits(corpus, tmp_path / "vqa", "vqa", answers=True),
                      prefix="vqa")
    assert task.answers == vqa.answers and not hasattr(task, "trie")  # no vocabulary to encode them with yet
    task.load_state_dict(vqa.state_dict())
    assert [candidate.tolist() for candidate in task.candidates] == [candidate.tolist() for candidate in vqa.candidates]
    assert task.trie is not None
    model = build_tiny_model(task.dictionary)
    task.load_dataset("test")
    dataset = task.dataset("test")
    answers = task.predict(model, dataset.collater([dataset[0], dataset[1]]))
    assert len(answers) == 2 and all(answer in vqa.answers for answer in answers)


def test_the_answer_list_is_logged_once(corpus, caplog):
    with caplog.at_level(logging.INFO):
        setup_task(VqaGenTask, VqaGenConfig, corpus, prefix="vqa")
    assert caplog.text.count("answer list: ") == 1


def test_a_checkpoints_dict_file_that_is_gone_is_replaced_by_the_stored_vocabulary(corpus, tmp_path, gpt2_bpe_dir):
    """load_model_ensemble_and_task builds the task from the checkpoint's own options, whose --dict-file may be on
    another machine."""
    trained = setup_task(CaptionTask, CaptionConfig, corpus, prefix="caption", eval_cider=False,
                         dict_file=str(gpt2_bpe_dir / "dict.txt"))
    moved = CaptionConfig(data=str(corpus), tsv_prefix="caption", patch_image_size=32, eval_cider=False,
                          dict_file=str(tmp_path / "gone" / "dict.txt"))
    task = CaptionTask.setup_task(moved, from_checkpoint=True)
    task.load_state_dict(trained.state_dict())
    assert task.dictionary.symbols == trained.dictionary.symbols
    with pytest.raises(FileNotFoundError, match="gone/dict.txt"):
        CaptionTask.setup_task(moved)  # given on the command line: the user's mistake, said at once
    orphan = CaptionTask.setup_task(moved, from_checkpoint=True)
    orphan.load_state_dict({})
    with pytest.raises(FileNotFoundError, match=r"gone/dict.txt \(the checkpoint's training option\) not found; the "
                                                r"checkpoint does not store its vocabulary"):
        orphan.build_model(None, from_checkpoint=True)


def test_an_ensemble_of_models_with_different_vocabularies_is_refused(corpus, tmp_path):
    trained = caption_task(corpus)
    other = only_splits(corpus, tmp_path / "other", "caption")
    shutil.copy(corpus / "caption_valid.tsv", other / "caption_train.tsv")
    second = caption_task(other)
    task = caption_task(corpus)
    task.load_state_dict(trained.state_dict())
    task.model_built = True  # as build_model leaves it (fairseq-generate --path a.pt:b.pt builds a's model first)
    task.load_state_dict(trained.state_dict())  # the same vocabulary: fine
    with pytest.raises(ValueError, match=r"the checkpoint was trained with another vocabulary than a model already "
                                         r"built with this task \(\d+ and \d+ symbols"):
        task.load_state_dict(second.state_dict())


def test_generate_split_gives_the_task_the_models_vocabulary(corpus, tmp_path, caplog):
    """The Python API: a model loaded with its stored vocabulary, a task built otherwise (a fairseq shape error
    deep in the generator before)."""
    from fairseq.data import Dictionary

    from unival.generate import build_task, generate_split

    task = caption_task(corpus)
    shuffled = Dictionary()
    for symbol in task.dictionary.symbols[shuffled.nspecial:]:
        shuffled.add_symbol(symbol)
    shuffled.symbols[4], shuffled.symbols[5] = shuffled.symbols[5], shuffled.symbols[4]  # same size, two ids swapped
    shuffled.indices = {symbol: index for index, symbol in enumerate(shuffled.symbols)}
    model = build_tiny_model(shuffled)
    with caplog.at_level(logging.WARNING):
        predictions, _ = generate_split(model, task, "test", batch_size=4, eval_beam=1, eval_max_len=3)
    assert len(predictions) == len(task.dataset("test")) and task.dictionary.symbols == shuffled.symbols
    assert "differs from the vocabulary the model was trained with, which the model holds" in caplog.text
    smaller = build_tiny_model(Dictionary())
    with pytest.raises(ValueError, match=r"the model's vocabulary has 4 symbols but the task's has \d+: give the "
                                         r"task the --dict-file"):
        generate_split(smaller, task, "test")
    with pytest.raises(ValueError, match=r"the options of task 'caption' were refused"):
        build_task("caption", str(corpus), ["--patch-image-sz", "96"])


def test_the_training_split_loaded_for_evaluation_is_read_as_evaluation_reads(corpus):
    """fairseq-generate --gen-subset train (it passes the checkpoint's task options) and unival evaluate --split
    train: every row once, in file order, unaugmented; fairseq-train's own loading still shuffles."""
    task = caption_task(corpus)
    task.load_dataset("train")
    assert task.dataset("train").shuffle
    task.load_dataset("train", task_cfg=OmegaConf.create({}))  # the checkpoint's task options
    assert not task.dataset("train").shuffle
    task.load_dataset("train", evaluation=True)
    assert not task.dataset("train").shuffle
    task.load_dataset("train")
    assert task.dataset("train").shuffle
