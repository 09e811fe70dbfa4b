"""Observation to prompt to action: :mod:`.templates` (PromptTemplate: an observation and its episode's earlier
steps become chat messages; expert fields become the JSON answer), :mod:`.parsing` (ActionParser: generated
text to one legal action, with the span the loss weights as the action) and :mod:`.batching` (PromptBatcher:
processor calls, padding and the prompt prefix a batch shares)."""
