"""Task definitions shipped with acd; installed as the package `acd.task_files`."""
