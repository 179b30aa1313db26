from tests.chat import make_service, say
from tests.factories import small_college


def test_record_and_card(session, db_url, today):
    small_college(session)
    svc = make_service(db_url, today)
    r = say(svc, "wangfang", "全勤率 张三 95 李四 90")
    print(r)
    assert "已记录 2 条" in r
    r = say(svc, "zhangsan", "储值卡")
    print(r)
    assert "全勤率 95%" in r
    r = say(svc, "wangfang", "撤销")
    print(r)
    r = say(svc, "zhangsan", "储值卡")
    print(r)
    assert "全勤率" not in r
    print(say(svc, "wangfang", "帮助"))
    print(say(svc, "wangfang", "全勤率 计算机2301 全班 100 张三 80\n作业 张三 90\n满勤率 计算机2301 96"))
    print(say(svc, "chenjing", "作业 张三 90 刘洋 80\n准时率 李四 200"))
    print(say(svc, "wangfang", "班级卡 计算机2301"))
    print(say(svc, "wangfang", "储值卡 张三"))
