"""Floor 6: one registered class per task kind (survival, cox, classification, binary): its head, its target,
its loss with everything fitted on the training patients, its validation metric and its score transform.
Adding a task is one :class:`~.kinds.TaskKind` subclass registered in :data:`~.kinds.TASKS`."""
