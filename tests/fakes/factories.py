"""A small college built directly in the database, for dispatch and channel tests."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from models.schema import Department, SchoolClass, Semester, Staff, Student, TeachingAssignment


@dataclass
class SmallCollege:
    dept: Department
    other_dept: Department
    cs: SchoolClass  # 计算机2301, 王芳's class
    se: SchoolClass  # 软件2301, another class in the same department
    acc: SchoolClass  # 会计2301, another department


def staff(session: Session, no: str, name: str, roles: str, dept: Department | None, userid: str) -> Staff:
    s = Staff(staff_no=no, name=name, roles=roles, department_id=dept.id if dept else None, wecom_userid=userid)
    session.add(s)
    session.flush()
    return s


def small_college(session: Session, with_calendar: bool = False) -> SmallCollege:
    """Two departments, three classes, one person per role, a few students (two named 刘洋)."""
    info = Department(name="信息工程系", head_staff_no="T900")
    econ = Department(name="经济管理系", head_staff_no="T901")
    session.add_all([info, econ])
    session.flush()
    wang = staff(session, "T001", "王芳", "班主任", info, "wangfang")
    chen = staff(session, "T002", "陈静", "任课教师", info, "chenjing")
    liu = staff(session, "T003", "刘伟", "辅导员", info, "liuwei")
    staff(session, "T004", "孙丽", "学工办", info, "sunli")
    staff(session, "T005", "周杰", "教研室", info, "zhoujie")
    zhao = staff(session, "T006", "赵强", "体育老师", info, "zhaoqiang")
    staff(session, "T900", "吴军", "系部主任", info, "wujun")
    staff(session, "T901", "钱敏", "系部主任", econ, "qianmin")
    staff(session, "T100", "郑源", "院领导", None, "zhengyuan")
    staff(session, "T101", "管理员", "管理员", None, "admin")
    he = staff(session, "T007", "何平", "班主任", info, "heping")
    xu = staff(session, "T008", "徐红", "班主任,任课教师", econ, "xuhong")
    cs = SchoolClass(code="计算机2301", name="计算机2301", department_id=info.id, grade=2023,
                     head_teacher_id=wang.id, counsellor_id=liu.id)
    se = SchoolClass(code="软件2301", name="软件技术2301", department_id=info.id, grade=2023,
                     head_teacher_id=he.id, counsellor_id=liu.id)
    acc = SchoolClass(code="会计2301", name="会计2301", department_id=econ.id, grade=2023,
                      head_teacher_id=xu.id)
    session.add_all([cs, se, acc])
    session.flush()
    session.add_all([
        TeachingAssignment(staff_id=chen.id, class_id=cs.id, course="Python程序设计"),
        TeachingAssignment(staff_id=zhao.id, class_id=cs.id, course="体育"),
        TeachingAssignment(staff_id=zhao.id, class_id=se.id, course="体育"),
        TeachingAssignment(staff_id=xu.id, class_id=acc.id, course="基础会计"),
    ])
    students = [
        ("2023010101", "张三", cs, "zhangsan"),
        ("2023010102", "李四", cs, "lisi"),
        ("2023010103", "王五", cs, "wangwu"),
        ("2023010104", "刘洋", cs, None),
        ("2023010105", "刘洋", cs, None),
        ("2023020101", "赵六", se, "zhaoliu"),
        ("2023030101", "钱七", acc, "qianqi"),
    ]
    session.add_all([Student(student_no=no, name=name, class_id=c.id, wecom_userid=uid)
                     for no, name, c, uid in students])
    if with_calendar:
        from datetime import date

        session.add_all([
            Semester(year="2025-2026", term=1, start=date(2025, 9, 1), end=date(2026, 1, 18)),
            Semester(year="2025-2026", term=2, start=date(2026, 2, 23), end=date(2026, 7, 10)),
        ])
    session.commit()
    return SmallCollege(info, econ, cs, se, acc)
