"""The answer trie: which tokens may follow a decoded prefix when answers must come from a fixed list (VQA), as
masks for constrained decoding and for the loss of constrained training."""
from typing import Dict, Iterable, List, Sequence

import torch


class Trie:
    """Token sequences (each ending with ``</s>``) stored as a prefix tree."""

    def __init__(self, sequences: Iterable[Sequence[int]] = ()):
        self.root: Dict[int, dict] = {}
        self.num_sequences = 0
        for sequence in sequences:
            self.insert(sequence)

    def insert(self, sequence: Sequence[int]) -> None:
        node = self.root
        for token in sequence:
            node = node.setdefault(int(token), {})
        self.num_sequences += 1

    def next_tokens(self, prefix: Sequence[int]) -> List[int]:
        """Tokens that continue ``prefix`` towards a stored sequence; empty when no stored sequence has that prefix."""
        node = self.root
        for token in prefix:
            node = node.get(int(token))
            if node is None:
                return []
        return list(node)

    def __contains__(self, sequence: Sequence[int]) -> bool:
        node = self.root
        for token in sequence:
            node = node.get(int(token))
            if node is None:
                return False
        return not node  # a stored sequence ends at a leaf (they all end with </s>)

    def __len__(self) -> int:
        return self.num_sequences

    def prefix_mask(self, prefixes: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """(N, V) bool: the tokens allowed after each row of ``prefixes`` (N, L)."""
        mask = torch.zeros(prefixes.size(0), vocab_size, dtype=torch.bool)
        for row, prefix in enumerate(prefixes.tolist()):
            allowed = self.next_tokens(prefix)
            if allowed:
                mask[row, allowed] = True
        return mask.to(prefixes.device)

    def target_masks(self, target: torch.Tensor, vocab_size: int, pad: int) -> torch.Tensor:
        """(T, V) bool for one target sequence (T,): position t allows what may follow ``target[:t]``; padding
        positions allow nothing (the loss leaves them out)."""
        tokens = [token for token in target.tolist()]
        mask = torch.zeros(len(tokens), vocab_size, dtype=torch.bool)
        for position, token in enumerate(tokens):
            if token == pad:
                break
            allowed = self.next_tokens(tokens[:position])
            if allowed:
                mask[position, allowed] = True
        return mask
