"""Evaluation: how well retrieval, behaviour adapters, grounded answers and routing work.

One home for the `ragtune eval` commands (cli) and what they measure: retrieval on a BEIR set
(retrieval), behaviour on held-out prompts (behaviour), answers with and without retrieval
through the OpenAI API (qa, qa_api, qa_score) and `model: auto` (route); report shows results.
Evaluation imports serving, training, retrieval and core; none of them imports evaluation.
"""
